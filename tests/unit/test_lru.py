"""shardsearch.lru.ByteLRU: the in-process caches' store, bounded in bytes."""

from __future__ import annotations

from shardsearch.lru import ByteLRU


def test_evicts_the_least_recently_used_past_the_budget() -> None:
    lru: ByteLRU[str] = ByteLRU(10)
    lru.put("a", b"xxxx")
    lru.put("b", b"xxxx")
    assert lru.get("a") == b"xxxx"  # a is now the most recently used
    lru.put("c", b"xxxx")  # 12 bytes: b goes
    assert lru.get("b") is None and lru.get("a") == b"xxxx" and lru.get("c") == b"xxxx"
    assert lru.nbytes == 8 and len(lru) == 2


def test_keys_count_when_asked_and_an_overwrite_is_not_counted_twice() -> None:
    lru: ByteLRU[str] = ByteLRU(100, key_bytes=len)
    lru.put("key", b"12345")
    lru.put("key", b"12")
    assert lru.nbytes == 5 and len(lru) == 1


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    lru: ByteLRU[str] = ByteLRU(4)
    lru.put("small", b"ab")
    lru.put("big", b"0123456789")
    assert lru.get("big") is None and lru.get("small") is None
    assert lru.nbytes == 0 and len(lru) == 0
