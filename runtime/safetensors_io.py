"""Minimal reader and writer of the safetensors format (numpy only; no new dependency).

Format: 8-byte little-endian header length N, then N bytes of JSON mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header;
an optional "__metadata__" entry), then the raw little-endian, row-major tensor bytes.

The reader memory-maps the file and copies only the requested slice, so a rank loading its
shard reads only those bytes. BF16 has no numpy dtype: it is returned as uint16 bit patterns
(`is_bf16` tells the caller to reinterpret them).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

HEADER_LENGTH_BYTES = 8
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}


class SafetensorsFile:
    """One .safetensors file opened for slice reads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(HEADER_LENGTH_BYTES))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        self._data_start = HEADER_LENGTH_BYTES + length

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def is_bf16(self, name: str) -> bool:
        return self.entries[name]["dtype"] == "BF16"

    def read(self, name: str, ranges: Iterable[tuple[int, int]] | None = None) -> np.ndarray:
        """The tensor `name`, or only its slice given as one (start, stop) per dimension."""
        entry = self.entries[name]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if begin == end:
            return np.zeros(shape, dtype=dtype)
        full = np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin,
                         shape=shape)
        if ranges is None:
            return np.array(full)
        return np.array(full[tuple(slice(a, b) for a, b in ranges)])


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write numpy arrays to `path` in safetensors format (no BF16; tests and tools)."""
    header: dict[str, dict] = {}
    offset = 0
    arrays = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
        nbytes = array.nbytes
        header[name] = {"dtype": _NAMES[np.dtype(array.dtype).newbyteorder("=")],
                        "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        arrays[name] = array
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as the spec advises
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays.values():
            f.write(array.tobytes())
