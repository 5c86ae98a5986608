"""A GGUF file's tensor table (names, ggml types, bytes), read from the header alone.

The plan needs it twice: which weight types a file holds (openvino-genai's GGUF reader handles
only a few), and how many bytes each transformer block weighs (to fit llama.cpp's
``n_gpu_layers`` to a device's free memory). No tensor data is read.
"""

from __future__ import annotations

import collections
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from modeld.models._gguf import GgufError, read_gguf_metadata

__all__ = ["GGML_TYPE_NAMES", "GgufTensor", "GgufTensors", "read_gguf_tensors"]

#: ggml_type ids as GGUF tensor infos write them (ggml.h); ids not listed print as "type N"
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}
_BLOCK = re.compile(r"blk\.(\d+)\.")
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GgufTensor:
    name: str
    type_name: str  #: GGML_TYPE_NAMES' name of its ggml type
    bytes: int  #: its data's size in the file, alignment padding included


@dataclass(frozen=True)
class GgufTensors:
    tensors: tuple[GgufTensor, ...]

    def bytes_by_type(self) -> dict[str, int]:
        """Bytes of tensor data per ggml type name, largest first."""
        sums: collections.Counter[str] = collections.Counter()
        for tensor in self.tensors:
            sums[tensor.type_name] += tensor.bytes
        return dict(sums.most_common())

    def block_bytes(self, layers: int) -> list[int]:
        """Bytes of each transformer block ``blk.N.*``, N = 0 .. ``layers`` - 1."""
        sizes = [0] * layers
        for tensor in self.tensors:
            match = _BLOCK.match(tensor.name)
            if match and int(match[1]) < layers:
                sizes[int(match[1])] += tensor.bytes
        return sizes


def read_gguf_tensors(path: Path) -> GgufTensors:
    """Every tensor info of the GGUF at ``path``; a tensor's bytes are the distance to the next
    tensor's data (or to the end of the file), so no per-type block size table is needed.

    :raises GgufError: not a GGUF file, or a damaged header.
    :raises OSError: the file cannot be opened.
    """
    meta = read_gguf_metadata(path)
    count = int(meta["gguf.tensor_count"])
    alignment = int(meta.get("general.alignment", _DEFAULT_ALIGNMENT)) or _DEFAULT_ALIGNMENT
    infos: list[tuple[str, int, int]] = []  # name, type, offset in the data section
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = int(meta["gguf.tensor_info_offset"])
        try:
            for _ in range(count):
                (length,) = struct.unpack_from("<Q", data, at)
                name = data[at + 8 : at + 8 + length].decode("utf-8", errors="replace")
                at += 8 + length
                (dims,) = struct.unpack_from("<I", data, at)
                at += 4 + 8 * dims
                kind, offset = struct.unpack_from("<IQ", data, at)
                at += 12
                infos.append((name, kind, offset))
        except struct.error:
            raise GgufError(f"{path}: the tensor infos end early (truncated file?)") from None
        data_start = -(-at // alignment) * alignment
        end = len(data) - data_start
    ordered = sorted(infos, key=lambda info: info[2])
    bounds = [offset for _, _, offset in ordered[1:]] + [end]
    tensors = tuple(
        GgufTensor(name, GGML_TYPE_NAMES.get(kind, f"type {kind}"), max(0, bound - offset))
        for (name, kind, offset), bound in zip(ordered, bounds, strict=True)
    )
    return GgufTensors(tensors)
