"""Vectors on the wire: packed little-endian float32 bytes <-> numpy, with the checks every entry point needs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shardsearch.errors import InvalidArgument

F32 = np.dtype("<f4")


def pack(matrix: np.ndarray) -> bytes:
    """Packs an array as contiguous little-endian float32 bytes."""
    return np.ascontiguousarray(matrix, dtype=F32).tobytes()


def unpack(data: bytes, dim: int, field: str = "vectors_f32") -> np.ndarray:
    """Reads an n x dim float32 matrix from packed bytes (a read-only view, no copy)."""
    if dim <= 0:
        raise InvalidArgument(f"{field}: dimension must be positive")
    row = 4 * dim
    if len(data) % row:
        raise InvalidArgument(f"{field}: {len(data)} bytes is not a whole number of {dim}-d float32 vectors ({row} bytes each)")
    return np.frombuffer(data, dtype=F32).reshape(-1, dim)


def check_finite(matrix: np.ndarray, field: str) -> None:
    if not np.isfinite(matrix).all():
        bad = int(np.argwhere(~np.isfinite(matrix))[0][0])
        where = f"{field}[{bad}]" if matrix.ndim == 2 and matrix.shape[0] > 1 else field
        raise InvalidArgument(f"{where} contains NaN or Inf")


def one_vector(floats: Sequence[float], packed: bytes, dim: int, field: str) -> np.ndarray:
    """Returns a (dim,) float32 vector from either the repeated-float or the packed form; checks size and values."""
    if len(floats) and packed:
        raise InvalidArgument(f"{field}: set either the float list or the packed float32 bytes, not both")
    if packed:
        if len(packed) != 4 * dim:
            raise InvalidArgument(f"{field}_f32: {len(packed)} bytes, expected {4 * dim} ({dim} float32 values)")
        vec = np.frombuffer(packed, dtype=F32)
    else:
        if len(floats) != dim:
            raise InvalidArgument(f"{field}: {len(floats)} values, but the collection has dim {dim}")
        vec = np.asarray(floats, dtype=np.float32)
    check_finite(vec, field)
    return vec


def many_vectors(floats: Sequence[float], packed: bytes, dim: int, field: str) -> np.ndarray:
    """Returns an n x dim float32 matrix from a flattened float list or packed bytes; checks size and values."""
    if len(floats) and packed:
        raise InvalidArgument(f"{field}: set either the float list or the packed float32 bytes, not both")
    if packed:
        matrix = unpack(packed, dim, f"{field}_f32")
    else:
        if len(floats) % dim:
            raise InvalidArgument(f"{field}: {len(floats)} values is not a multiple of the collection's dim {dim}")
        matrix = np.asarray(floats, dtype=np.float32).reshape(-1, dim)
    check_finite(matrix, field)
    return matrix
