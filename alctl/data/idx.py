"""The IDX format of the MNIST files (uint8 data only): `read_idx` / `parse_idx` read it, `idx_bytes` writes it, and
`write_atomic` puts a file in place whole or not at all."""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path

import numpy as np

_UBYTE = 0x08  # the only data type the MNIST files use


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """The uint8 array that IDX bytes `data` hold; ValueError naming `what` when the header or size is wrong."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{what}: not an IDX file (it must start with two zero bytes)")
    if data[2] != _UBYTE:
        raise ValueError(f"{what}: IDX data type 0x{data[2]:02x}, expected 0x08 (unsigned bytes)")
    ndim = data[3]
    start = 4 + 4 * ndim
    if ndim == 0 or len(data) < start:
        raise ValueError(f"{what}: IDX header cut short ({len(data)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:start])
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - start != size:
        raise ValueError(f"{what}: IDX shape {'x'.join(map(str, shape))} needs {size} bytes of data, "
                         f"the file has {len(data) - start}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in IDX file `path` (a writable copy)."""
    return parse_idx(Path(path).read_bytes(), str(path)).copy()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array: magic (0, 0, 0x08, ndim), big-endian dimensions, the raw bytes."""
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"IDX needs a uint8 array of at least one dimension, got {array.dtype} {array.shape}")
    header = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename: whole or not at all."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:  # a new file (mode from the umask, like any other output)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
