"""Vectors on the wire: packed little-endian float32 bytes <-> numpy, with the checks every entry point needs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shardsearch.errors import InvalidArgument

F32 = np.dtype("<f4")
MAX_ABS_VALUE = 1e15
"""Largest magnitude of a vector value: scores of 4096-d vectors within it cannot overflow float32."""


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
    """Values must be finite and at most MAX_ABS_VALUE in magnitude.

    The bound keeps every L2 distance and inner product finite in float32 (up to dim 4096 and far beyond: 4096 *
    (2e15)^2 = 1.6e34 < 3.4e38). Without it a finite query such as [1.9e19, 0, ...] overflows every score to inf
    and a search silently finds nothing, and a stored vector with such values could never be found.
    """
    if (np.abs(matrix) <= MAX_ABS_VALUE).all():  # False for NaN too: one pass for the common case
        return
    finite = np.isfinite(matrix)
    bad = ~finite if not finite.all() else np.abs(matrix) > MAX_ABS_VALUE
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"{field}[{first[0]}]" if matrix.ndim == 2 and matrix.shape[0] > 1 else field
    if not finite.all():
        raise InvalidArgument(f"{where} contains NaN or Inf")
    raise InvalidArgument(f"{where}: value {float(matrix[first]):g} exceeds the maximum magnitude {MAX_ABS_VALUE:g}")


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
