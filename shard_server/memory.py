"""Giving freed heap back to the operating system after heavy work.

glibc keeps memory freed by large transient allocations (request messages being decoded, training buffers, snapshot
arrays) in its arenas, so a shard's resident size stays at its high-water mark: measured on a 100K x 128 shard, about
600 bytes a vector above what the collection holds, more after a restart. `malloc_trim(0)` returns the free pages;
the shard calls it when its maintenance thread goes idle after work and after snapshots and restores. Elsewhere than
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_LIBC = _load()


def trim() -> None:
    """Returns free heap pages to the system (a few ms on a large heap; blocks other threads' allocations meanwhile)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
