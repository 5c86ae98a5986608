"""Read a GGUF file's metadata header without loading (or even reading) its tensors.

Large arrays (the vocabulary, merges, scores) are skipped, keeping only their element type and
count; small arrays (EOS ids, say) are kept whole.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GGUF_MAGIC", "GgufArray", "GgufError", "read_gguf_metadata"]

GGUF_MAGIC = b"GGUF"
_KEEP_ARRAYS_UP_TO = 64
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The file is not GGUF, or its header is damaged."""


@dataclass(frozen=True)
class GgufArray:
    """A skipped large array: what it holds and how many."""

    element_type: int
    count: int


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error:
            raise GgufError("header ends early (truncated file?)") from None
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > len(self.data) - self.at:
            raise GgufError("string length past the end of the file")
        raw = self.data[self.at : self.at + length]
        self.at += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.at += 8 + self.unpack("<Q")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = self.unpack("<I"), self.unpack("<Q")
            if count <= _KEEP_ARRAYS_UP_TO:
                return [self.value(element) for _ in range(count)]
            if element == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif element in _SCALARS:
                self.at += count * struct.calcsize(_SCALARS[element])
            else:
                raise GgufError(f"unsupported nested array type {element}")
            if self.at > len(self.data):
                raise GgufError("array past the end of the file")
            return GgufArray(element, count)
        raise GgufError(f"unknown metadata value type {kind}")


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The header's key/value metadata, plus ``gguf.version``, ``gguf.tensor_count`` and
    ``gguf.tensor_info_offset`` (the byte where the tensor infos start).

    :raises GgufError: not a GGUF file, or a damaged header.
    :raises OSError: the file cannot be opened.
    """
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise GgufError(f"{path} is not a GGUF file (bad magic)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data)
            cursor.at = 4
            version = cursor.unpack("<I")
            if version not in (2, 3):
                raise GgufError(f"unsupported GGUF version {version}")
            tensors, count = cursor.unpack("<Q"), cursor.unpack("<Q")
            metadata: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": tensors}
            for _ in range(count):
                key = cursor.string()
                metadata[key] = cursor.value(cursor.unpack("<I"))
            # where the tensor infos start (models._gguf_tensors reads them from here)
            metadata["gguf.tensor_info_offset"] = cursor.at
            return metadata
