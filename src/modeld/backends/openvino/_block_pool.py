"""The paged KV cache of one OpenVINO model: every session's K and V blocks, in arrays the
infer request reads and writes in place.

A session owns a list of block indices and a length (``_session``); the pool only hands out,
takes back, copies, reads and writes blocks. Block ``b`` holds tokens ``BLOCK_SIZE*b'`` ..
``BLOCK_SIZE*(b'+1)-1`` of whichever session lists it at index ``b'``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import openvino as ov

__all__ = ["BLOCK_SIZE", "BlockPool", "blocks_for"]

#: tokens per KV block: the CPU plugin's paged-attention block size
BLOCK_SIZE = 32
_FIRST_POOL_BLOCKS = 64


def blocks_for(tokens: int) -> int:
    """Blocks that hold ``tokens`` tokens."""
    return math.ceil(tokens / BLOCK_SIZE)


class BlockPool:
    """The KV cache of every session of one model: per layer, K and V blocks in arrays that the
    infer request reads and writes in place. Grows by doubling; freed blocks are reused."""

    def __init__(self, compiled: Any, request: Any) -> None:
        self._request = request
        self._layouts: dict[str, tuple[Any, tuple[int, ...]]] = {}
        for port in compiled.inputs:
            name = port.get_any_name()
            if name.startswith(("key_cache.", "value_cache.")):
                tail = tuple(int(d.get_length()) for d in list(port.get_partial_shape())[1:])
                self._layouts[name] = (port.get_element_type(), tail)
        self.arrays: dict[str, np.ndarray] = {}
        self.capacity = 0
        self._free: list[int] = []
        self._grow(_FIRST_POOL_BLOCKS)

    @property
    def element_type(self) -> str:
        return str(next(iter(self._layouts.values()))[0].get_type_name())

    def _grow(self, capacity: int) -> None:
        for name, (element_type, tail) in self._layouts.items():
            # 16-bit caches are held as raw uint16 (numpy has no bf16) and typed for OpenVINO
            dtype = np.float32 if element_type == ov.Type.f32 else np.uint16
            array = np.zeros((capacity, *tail), dtype)
            if name in self.arrays:
                array[: self.capacity] = self.arrays[name]
            self.arrays[name] = array
            self._request.set_tensor(name, ov.Tensor(array, list(array.shape), element_type))
        self._free.extend(range(capacity - 1, self.capacity - 1, -1))
        self.capacity = capacity

    def take(self, count: int) -> list[int]:
        if count > len(self._free):
            self._grow(max(2 * self.capacity, self.capacity + count - len(self._free)))
        taken = self._free[-count:] if count else []
        del self._free[len(self._free) - count :]
        return taken

    def give_back(self, blocks: Sequence[int]) -> None:
        self._free.extend(blocks)

    def read(self, blocks: Sequence[int]) -> dict[str, np.ndarray]:
        index = np.asarray(blocks, np.int64)
        return {name: array[index] for name, array in self.arrays.items()}

    def write(self, blocks: Sequence[int], saved: Mapping[str, np.ndarray]) -> None:
        """The first ``len(blocks)`` blocks of each of ``saved``'s arrays (from :meth:`read`)
        into ``blocks``.

        :raises ValueError: an array holds fewer blocks, or another dtype or block shape.
        :raises KeyError: a layer is missing.
        """
        index = np.asarray(blocks, np.int64)
        for name, array in self.arrays.items():
            data = saved[name][: len(blocks)]
            if data.shape != (len(blocks), *array.shape[1:]) or data.dtype != array.dtype:
                raise ValueError(f"{name} is {data.dtype}{data.shape}, not this model's layout")
            array[index] = data

    def copy(self, source: Sequence[int], target: Sequence[int]) -> None:
        """Block ``source[i]``'s K and V, every layer, into block ``target[i]``."""
        src, dst = np.asarray(source, np.int64), np.asarray(target, np.int64)
        for array in self.arrays.values():
            array[dst] = array[src]
