"""One OpenVINO session: a list of KV blocks in the model's pool and a length.

Truncation is a new length; sharing copies the blocks that hold the shared tokens; snapshots
and parking save and write back the session's blocks. Every call tells the engine how many
tokens to attend to, so blocks past the length are never read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from modeld.backends._base import (
    EngineSession,
    EngineState,
    SamplingParams,
    check_room,
    check_state_fits,
)
from modeld.backends.openvino._block_pool import BLOCK_SIZE, blocks_for
from modeld.backends.openvino._sampler import NumpySampler
from modeldconn._errors import SessionFatal, SnapshotMismatch

if TYPE_CHECKING:
    from modeld.backends.openvino._backend import OpenVinoModel

__all__ = ["OpenVinoSession"]


class OpenVinoSession:
    def __init__(self, model: OpenVinoModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.kv_len = 0
        self.blocks: list[int] = []
        self._logits: np.ndarray | None = None  # of the last resident token, when current

    @property
    def batch_group(self) -> object:
        """Every session of a model lives in its block pool: any of them decode together."""
        return self.model

    def hold_blocks_for(self, tokens: int) -> None:
        missing = blocks_for(tokens) - len(self.blocks)
        if missing > 0:
            self.blocks.extend(self.model.pool.take(missing))

    def truncate(self, keep: int) -> None:
        if keep < self.kv_len:
            self.kv_len = keep
            self._logits = None
        self._release_blocks_past(self.kv_len)

    def _release_blocks_past(self, tokens: int) -> None:
        kept = blocks_for(tokens)
        self.model.pool.give_back(self.blocks[kept:])
        del self.blocks[kept:]

    def prefill(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        check_room(self.kv_len, len(tokens), self.n_ctx)
        start = self.kv_len
        self.hold_blocks_for(start + len(tokens))
        try:
            (logits,) = self.model.forward([(tokens, start, self.blocks)])
        except RuntimeError as exc:
            self.undo_past(start)
            raise SessionFatal(f"OpenVINO inference failed: {exc}") from None
        self.accept(logits, start + len(tokens))

    def undo_past(self, start: int) -> None:
        """After a failed inference: what it wrote past ``start`` is never attended to (the
        length bounds reads); the blocks held for it go back."""
        self._logits = None
        self._release_blocks_past(start)

    def accept(self, logits: np.ndarray, kv_len: int) -> None:
        self._logits = logits
        self.kv_len = kv_len

    def logits_current(self) -> bool:
        return self._logits is not None and self.kv_len > 0

    def current_logits(self) -> np.ndarray:
        if self._logits is None:
            raise SessionFatal("no logits for the last resident token")
        return self._logits

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> NumpySampler:
        return NumpySampler(
            self.current_logits,
            params,
            history,
            self.model.end_of_generation_ids(),
            n_ctx=self.n_ctx,
        )

    def save_state(self) -> EngineState:
        """The session's KV blocks of every layer, as the engine holds them, plus the logits."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.model.pool.read(self.blocks))  # type: ignore[arg-type]
        current = self._logits if self.logits_current() else None
        logits = None if current is None else current.astype(np.float32).tobytes()
        return EngineState(buffer.getvalue(), self.kv_len, logits)

    def load_state(self, state: EngineState) -> None:
        """Replace the resident KV (and logits) with ``state``'s blocks.

        :raises InvalidArgument: ``state`` holds more tokens than this session's n_ctx.
        :raises SnapshotMismatch: its arrays are not this model's block layout.
        Either way the session is left empty (kv_len 0) and usable.
        """
        self.truncate(0)
        check_state_fits(state.kv_len, self.n_ctx)
        if state.kv_len and not self._write_saved(state, state.kv_len):
            raise SnapshotMismatch(
                f"a saved state of {state.kv_len} tokens ({len(state.kv)} bytes) is not this "
                f"model's KV layout ({BLOCK_SIZE}-token {self.model.pool.element_type} blocks)",
                kv_len=state.kv_len,
                n_ctx=self.n_ctx,
            )
        self.kv_len = state.kv_len
        if state.logits is not None:
            self._logits = np.frombuffer(state.logits, dtype=np.float32).copy()

    def _write_saved(self, state: EngineState, tokens: int) -> bool:
        """The blocks of ``state`` that hold its first ``tokens`` tokens, into blocks of this
        (empty) session; False, and still empty, when they are not this model's layout."""
        self.hold_blocks_for(tokens)
        try:
            with np.load(io.BytesIO(state.kv), allow_pickle=False) as saved:
                self.model.pool.write(self.blocks, saved)
        except (KeyError, ValueError, OSError):
            self.truncate(0)
            return False
        return True

    def adopt_prefix(self, donor: EngineSession | EngineState, keep: int) -> bool:
        """Replace this session's KV with the first ``keep`` tokens of ``donor``'s: the
        ``ceil(keep / BLOCK_SIZE)`` blocks that hold them are copied within the pool (from a
        saved state: written from its arrays), nothing more, whatever either side's n_ctx. The
        last block may carry donor tokens past ``keep``; the length bounds what is attended to,
        and this session's next tokens overwrite them. Logits are not current afterwards.
        Returns False, leaving this session empty and usable, when the donor is another
        model's, ``keep`` exceeds what either side has or holds, or the layout differs.
        """
        if keep < 0:
            raise ValueError(f"keep {keep} < 0")
        if donor is self and keep <= self.kv_len:
            self.truncate(keep)
            self._logits = None
            return True
        self.truncate(0)
        if keep == 0:
            return True
        if keep > self.n_ctx or keep > donor.kv_len:
            return False
        if isinstance(donor, EngineState):
            if not self._write_saved(donor, keep):
                return False
        elif isinstance(donor, OpenVinoSession) and donor.model is self.model:
            self.hold_blocks_for(keep)
            self.model.pool.copy(donor.blocks[: len(self.blocks)], self.blocks)
        else:
            return False
        self.kv_len = keep
        return True

    def close(self) -> None:
        self.truncate(0)
