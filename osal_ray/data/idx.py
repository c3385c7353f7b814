"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed files)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from osal_ray.errors import InputError

# IDX magic: two zero bytes, a type code, the number of dimensions.
_UBYTE = 0x08


def read_idx(path: Path, field: str = "data.root") -> np.ndarray:
    """Read an unsigned-byte IDX file into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise InputError(field, f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise InputError(field, f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _UBYTE:
        raise InputError(field, f"{path}: IDX type code {raw[2]:#x} is not unsigned byte")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(field, f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise InputError(
            field, f"{path}: header declares shape {shape} ({expected} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when the name ends in .gz)."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, data.ndim]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + data.tobytes())
