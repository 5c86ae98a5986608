"""llama.cpp's per-sequence state blob, cut down to a prefix of its tokens.

Sharing a prefix between sessions must copy only what the receiver needs: loading a donor's
whole sequence state and truncating afterwards fails outright when the donor holds more cells
than the receiver's sequence has (llama.cpp then refuses the state). llama.cpp has no call that
saves part of a sequence (``llama_state_seq_get_data_ext``'s flags select SWA-only or
device-resident data, not a token range), and ``llama_memory_seq_cp`` between KV streams
copies a whole stream and only at the next ``llama_decode``. So the blob is cut here.

The layout is what ``llama_state_seq_get_data`` writes for one sequence (llama.cpp's
``llama_context::state_seq_write_data`` and ``llama_kv_cache::state_write``), little-endian::

    u32 magic, i32 seq_id
    then per KV cache (one; two for sliding-window models: the full layers, then the SWA ones):
        u32 n_stream (1 for one sequence)
        u32 cell_count; if > 0:
            cell_count x (i32 pos, u32 n_seq_id = 1, i32 seq_id)
            u32 v_trans, u32 n_layer
            n_layer x (i32 k_type, u64 k_row_bytes, cell_count x k_row_bytes)
            v_trans == 0: n_layer x (i32 v_type, u64 v_row_bytes, cell_count x v_row_bytes)
            v_trans == 1: n_layer x (i32 v_type, u32 v_el_bytes, u32 n_embd_v,
                                     n_embd_v x cell_count x v_el_bytes)

Anything that does not parse to exactly this, to the last byte, is not cut (``None``): a
different llama.cpp layout is a failed share, never a corrupt one.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["cut_to_prefix"]


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise _Malformed(f"{size} bytes wanted at {self.at} of {len(self.data)}")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def i32(self) -> int:
        value: int = struct.unpack("<i", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.take(8))[0]
        return value


def _rows(chunk: bytes, count: int, row_bytes: int, keep: np.ndarray) -> bytes:
    """The rows of ``chunk`` (``count`` rows of ``row_bytes``) whose index is in ``keep``."""
    table = np.frombuffer(chunk, np.uint8).reshape(count, row_bytes)
    return bytes(table[keep].tobytes())


def _cut_cache(reader: _Reader, seq_id: int, keep_tokens: int, out: list[bytes]) -> None:
    """One KV cache's section: its cells at positions ``0..keep_tokens-1``, appended to out."""
    if reader.u32() != 1:
        raise _Malformed("a sequence's state has one stream")
    out.append(struct.pack("<I", 1))
    count = reader.u32()
    if count == 0:
        if keep_tokens:
            raise _Malformed("an empty cache cannot give a prefix")
        out.append(struct.pack("<I", 0))
        return
    cells = np.frombuffer(reader.take(12 * count), dtype="<i4").reshape(count, 3)
    if (cells[:, 1] != 1).any() or (cells[:, 2] != seq_id).any():
        raise _Malformed("cells of other sequences, or cell metadata of another layout")
    positions = cells[:, 0]
    kept = np.flatnonzero(positions < keep_tokens)
    # the prefix must be whole: every position 0..keep-1 exactly once
    if len(kept) != keep_tokens or not np.array_equal(
        np.sort(positions[kept]), np.arange(keep_tokens)
    ):
        raise _Malformed(f"the state does not hold positions 0..{keep_tokens - 1}")
    out.append(struct.pack("<I", keep_tokens))
    if keep_tokens == 0:
        # an empty section ends at its cell count; the data below is skipped
        _skip_data(reader, count)
        return
    out.append(cells[kept].astype("<i4").tobytes())
    v_trans, layers = reader.u32(), reader.u32()
    if v_trans not in (0, 1):
        raise _Malformed(f"v_trans {v_trans}")
    out.append(struct.pack("<II", v_trans, layers))
    for _ in range(layers):  # K: a row per cell
        k_type, row_bytes = reader.i32(), reader.u64()
        out.append(struct.pack("<iQ", k_type, row_bytes))
        out.append(_rows(reader.take(count * row_bytes), count, row_bytes, kept))
    for _ in range(layers):
        if not v_trans:  # V: a row per cell
            v_type, row_bytes = reader.i32(), reader.u64()
            out.append(struct.pack("<iQ", v_type, row_bytes))
            out.append(_rows(reader.take(count * row_bytes), count, row_bytes, kept))
        else:  # V transposed: per embedding element, one value per cell
            v_type, element, width = reader.i32(), reader.u32(), reader.u32()
            out.append(struct.pack("<iII", v_type, element, width))
            table = np.frombuffer(reader.take(width * count * element), np.uint8)
            table = table.reshape(width, count, element)
            out.append(table[:, kept, :].tobytes())


def _skip_data(reader: _Reader, count: int) -> None:
    v_trans, layers = reader.u32(), reader.u32()
    for _ in range(layers):
        reader.i32()
        reader.take(count * reader.u64())
    for _ in range(layers):
        reader.i32()
        if not v_trans:
            reader.take(count * reader.u64())
        else:
            element, width = reader.u32(), reader.u32()
            reader.take(width * count * element)


def cut_to_prefix(blob: bytes, keep: int) -> bytes | None:
    """``blob`` (from ``llama_state_seq_get_data``) holding only the cells at positions
    ``0..keep-1``, loadable with ``llama_state_seq_set_data`` into any sequence with room for
    ``keep`` cells; None when ``blob`` is not the layout above or lacks those positions.

    Cost: one pass over ``blob``; the result is about ``keep / cells`` of its size.
    """
    if keep < 0:
        raise ValueError(f"keep {keep} < 0")
    reader = _Reader(blob)
    try:
        header = reader.take(8)
        seq_id = struct.unpack("<i", header[4:])[0]
        out = [header]
        while reader.at < len(blob):
            _cut_cache(reader, seq_id, keep, out)
    except (_Malformed, ValueError):
        return None
    return b"".join(out)
