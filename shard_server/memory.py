"""Keeping a shard's resident memory near what its collections hold (glibc's allocator; elsewhere nothing happens).

glibc keeps memory freed by large transient allocations (request messages being decoded, training buffers, the
candidates a search decodes) in per-thread arenas, and its dynamic mmap threshold rises to 32 MiB after the first
large free, so later temporaries of up to 32 MiB come from those arenas and stay resident. Measured on one shard with
200K x 512 vectors in sq8 (benchmarks/memory.py; the collection itself holds ~650 bytes a vector):

| allocator settings | cold | after 5 s of BatchSearch | after a restart | BatchSearch q/s |
|---|---:|---:|---:|---:|
| glibc defaults | 1,098 | 1,233 | 867 | 3,908 |
| arena max 2 | 873 | 1,016 | 870 | 3,643 |
| mmap threshold 1 MiB | 788 | 838 | 766 | 2,987 |
| arena max 2 + mmap threshold 1 MiB | 804 | 915 | 769 | 2,998 |
| **arena max 2 + mmap threshold 4 MiB** (what `configure` sets) | 768 | 917 | 771 | 3,576 |

(bytes per vector; q/s within this machine's noise of ~10%). So the shard sets those two at start, unless
MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ / GLIBC_TUNABLES say otherwise, and calls `malloc_trim(0)` when its
maintenance thread goes idle after work and after snapshots and restores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_LIBC = _load()
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (malloc.h)
ARENA_MAX = 2
MMAP_THRESHOLD = 4 << 20  # allocations from here up are mapped and unmapped, so they never stay resident when freed


def configure() -> None:
    """Sets the arena count and a fixed mmap threshold (see above); call before threads start."""
    if _LIBC is None or "GLIBC_TUNABLES" in os.environ:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, ARENA_MAX)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Returns free heap pages to the system (a few ms on a large heap; blocks other threads' allocations meanwhile)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
