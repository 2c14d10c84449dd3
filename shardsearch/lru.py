"""A least-recently-used map of byte strings bounded by their total size: the in-process result and embedding caches.

Kept here rather than taken from `cachetools`: its `getsizeof` sees only the value (the embedding cache counts its
keys too) and it raises on an entry larger than the whole budget, where a cache should just not keep it.
"""

from __future__ import annotations

import collections
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class ByteLRU(Generic[K]):
    def __init__(self, max_bytes: int, key_bytes: Callable[[K], int] = lambda key: 0) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0  # the values' lengths, plus key_bytes of each key
        self._key_bytes = key_bytes
        self._entries: collections.OrderedDict[K, bytes] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> bytes | None:
        """The value, marked most recently used; None if absent."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: bytes) -> None:
        """Stores the value (most recently used), then evicts the least recently used entries while over budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= self._key_bytes(key) + len(old)
        self._entries[key] = value
        self.nbytes += self._key_bytes(key) + len(value)
        while self.nbytes > self.max_bytes and self._entries:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.nbytes -= self._key_bytes(evicted_key) + len(evicted)
