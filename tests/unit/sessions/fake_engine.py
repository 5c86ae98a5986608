"""A deterministic in-process engine behind the real seam (``modeld.backends._base``).

Its "KV" is the list of tokens; its next token is a function of the whole KV, so a session
gives the same tokens whichever way its KV came to be (computed, copied, parked, restored),
exactly like a real engine does when warm equals cold. It counts what it computes, so the
tests can check reuse arithmetic against work actually done. Contexts hold one session each;
``adopt_prefix`` refuses a donor whose KV does not fit the receiver, as llama.cpp does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modeld.backends._base import EngineSession, EngineState, SamplingParams, check_room
from modeld.models._facts import ModelFacts, ModelSpec
from modeldconn._errors import InvalidArgument
from modeldconn._types import Capabilities

VOCAB = 16384


def next_token(kv: Sequence[int]) -> int:
    digest = hashlib.blake2b(array("i", kv).tobytes(), digest_size=4).digest()
    return 3 + int.from_bytes(digest, "little") % (VOCAB - 3)  # never 0..2 (EOS is 2)


@dataclass
class Work:
    """What the engine computed, for the tests' arithmetic."""

    prefilled: int = 0
    #: tokens of each prefill call, in order
    prefill_calls: list[int] = field(default_factory=list)
    decode_calls: int = 0
    threads: set[str] = field(default_factory=set)  #: where KV work ran
    tokenize_threads: set[str] = field(default_factory=set)


class FakeSampler:
    def __init__(self, session: FakeSession) -> None:
        self._session = session

    def logits(self) -> np.ndarray:
        """One-hot at the token the fake model always picks (what a grammar would mask)."""
        row = np.full(self._session.model.facts.vocab_size, -10.0, dtype=np.float32)
        row[next_token(self._session.kv)] = 10.0
        return row

    def sample(self, allowed: np.ndarray | None = None) -> int:
        assert self._session.logits_current()
        token = next_token(self._session.kv)
        assert allowed is None or allowed[token], "the fake model's token is masked out"
        return token

    def close(self) -> None:
        pass


class FakeSession:
    def __init__(self, model: FakeModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.kv: list[int] = []
        self._logits_for = -1
        self.closed = False
        self.kv_cache_type = "f16"

    @property
    def kv_len(self) -> int:
        return len(self.kv)

    @property
    def batch_group(self) -> object:
        return self.model

    def _touch(self) -> None:
        self.model.work.threads.add(threading.current_thread().name)
        assert not self.closed

    def truncate(self, keep: int) -> None:
        self._touch()
        if keep < len(self.kv):
            del self.kv[keep:]
            self._logits_for = -1

    def prefill(self, tokens: Sequence[int]) -> None:
        self._touch()
        check_room(len(self.kv), len(tokens), self.n_ctx)
        if self.model.seconds_per_token:
            time.sleep(len(tokens) * self.model.seconds_per_token)
        self.kv.extend(tokens)
        self.model.work.prefilled += len(tokens)
        self.model.work.prefill_calls.append(len(tokens))
        self._logits_for = len(self.kv)

    def logits_current(self) -> bool:
        return self._logits_for == len(self.kv) and bool(self.kv)

    def sampler(self, params: SamplingParams, history: Sequence[int]) -> FakeSampler:
        return FakeSampler(self)

    def save_state(self) -> EngineState:
        self._touch()
        logits = b"L" if self.logits_current() else None
        return EngineState(array("i", self.kv).tobytes(), len(self.kv), logits)

    def load_state(self, state: EngineState) -> None:
        self._touch()
        self.kv, self._logits_for = [], -1
        if state.kv_len > self.n_ctx:
            raise InvalidArgument(f"{state.kv_len} tokens do not fit n_ctx {self.n_ctx}")
        self.kv = list(array("i", state.kv))
        if state.logits is not None:
            self._logits_for = len(self.kv)

    def adopt_prefix(self, donor: EngineSession | EngineState, keep: int) -> bool:
        self._touch()
        self.kv, self._logits_for = [], -1
        tokens = (
            list(array("i", donor.kv)) if isinstance(donor, EngineState) else list(donor.kv)  # type: ignore[attr-defined]
        )
        if len(tokens) > self.n_ctx:  # like llama.cpp: a whole state that does not fit
            self.model.refused_adoptions += 1
            return False
        self.kv = tokens[:keep]
        return True

    def close(self) -> None:
        self.closed = True


class FakeModel:
    n_threads = 1
    n_batch = 64

    def __init__(self, facts: ModelFacts, rows: int) -> None:
        self.facts = facts
        self.max_decode_rows = rows
        self.decode_batch_exact = True
        self.work = Work()
        self.refused_adoptions = 0
        #: engine time a prefilled token costs (0: none), for tests of time-sized calls
        self.seconds_per_token = 0.0

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        self.work.tokenize_threads.add(threading.current_thread().name)
        return ([1] if add_special else []) + [3 + ord(c) % (VOCAB - 3) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def piece(self, token: int) -> bytes:
        return b"x"

    def is_end_of_generation(self, token: int) -> bool:
        return token == 2

    def open_session(self, n_ctx: int, kv_cache_type: str = "f16") -> FakeSession:
        session = FakeSession(self, n_ctx)
        session.kv_cache_type = kv_cache_type  # what a context of that type was opened with
        return session

    def decode_batch(self, feeds: Sequence[tuple[EngineSession, int]]) -> None:
        for engine, token in feeds:
            engine.prefill([token])
        self.work.decode_calls += 1

    def pooled_bytes(self) -> int:
        return 0

    def drop_pooled(self, keep: tuple[int, str] | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


class FakeBackend:
    name = "fake"
    capabilities = Capabilities(
        token_level_truncation=True,
        kv_copy_between_sessions=True,
        native_state_snapshot=True,
        batched_decode=True,
        chat_template=True,
        grammar=False,
    )

    def __init__(self, rows: int = 4) -> None:
        self.fingerprint: dict[str, object] = {"backend": "fake"}
        self.rows = rows
        self.models: list[FakeModel] = []

    kv_cache_types = ("f16", "q8_0", "q4_0")
    device = ""

    def check_kv_cache_type(self, facts: ModelFacts, kv_cache_type: str) -> None:
        pass  # the fake's KV is token ids: any type holds them

    def load(self, spec: ModelSpec) -> FakeModel:
        model = FakeModel(spec.facts, self.rows)
        self.models.append(model)
        return model


def fake_spec(name: str = "fake") -> ModelSpec:
    facts = ModelFacts(
        name=name,
        path=Path(f"/nonexistent/{name}.gguf"),
        digest=hashlib.sha256(name.encode()).hexdigest(),
        file_bytes=1000,
        architecture="fake",
        context_length=8192,
        layers=1,
        attention_heads=1,
        kv_heads=1,
        head_dim=2,
        value_dim=2,
        sliding_window=0,
        vocab_size=VOCAB,
        chat_template="{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        chat_template_source="gguf",
        bos_token_id=1,
        eos_token_ids=(2,),
    )
    return ModelSpec(facts)
