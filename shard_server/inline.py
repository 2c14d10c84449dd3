"""Whether a small search runs on the shard's event loop instead of the executor (off by default: --inline-search)."""

from __future__ import annotations

import math
import time
import weakref

from shardsearch.shard_server.index import Collection

# A search batch of at most INLINE_MAX_ROWS queries, without filter, payloads or fields, whose recent searches took
# at most INLINE_MAX_S of CPU runs on the event loop. Measured on 2 shared cores (benchmarks/latency.py): an executor
# hop costs ~0.1 ms of CPU per batch plus GIL hand-offs and a wake-up, and one query over 30-100K vectors at nprobe 8
# costs 0.2-0.5 ms. Holding the loop that long costs little: the shard runs one FAISS call at a time
# (max_in_flight 1), so requests that arrive meanwhile would wait for it anyway. The bound keeps a big index or a
# high nprobe in the executor.
INLINE_MAX_ROWS = 4
INLINE_MAX_S = 0.001
INLINE_GAP_S = 0.001  # a search starting this soon after an inline one ended was waiting for it (a round trip here: >1 ms)
INLINE_HOLD_S = 1.0  # how long overlapping searches keep searches in the executor


class InlinePolicy:
    """Whether a small search batch runs on the event loop: by the measured cost of the collection's recent small
    searches (an exponential mean of the searching thread's CPU time, which waiting for a core does not inflate;
    unknown until one ran in the executor), never on a GPU, and only while searches do not overlap.

    Overlapping searches must batch, and a search run inline hides the overlap (nothing else starts while it runs),
    so overlap is noticed two ways: a search arriving while another is queued or running, or one starting within
    `gap_s` of an inline search's end (it was waiting for the loop). Either keeps searches in the executor for
    `hold_s`, where they batch again."""

    def __init__(self, enabled: bool, max_rows: int = INLINE_MAX_ROWS, max_s: float = INLINE_MAX_S,
                 gap_s: float = INLINE_GAP_S, hold_s: float = INLINE_HOLD_S) -> None:
        self.enabled = enabled
        self.max_rows = max_rows
        self.max_s = max_s
        self.gap_s = gap_s
        self.hold_s = hold_s
        self._cost: weakref.WeakKeyDictionary[Collection, float] = weakref.WeakKeyDictionary()
        self._inline_end = -math.inf
        self._overlap_at = -math.inf

    def arrival(self, busy: bool) -> None:
        now = time.monotonic()
        if busy or now - self._inline_end < self.gap_s:
            self._overlap_at = now

    def ran_inline(self) -> None:
        self._inline_end = time.monotonic()

    def allows(self, coll: Collection, rows: int) -> bool:
        return (
            self.enabled and rows <= self.max_rows and self._cost.get(coll, math.inf) <= self.max_s
            and time.monotonic() - self._overlap_at > self.hold_s
        )

    def record(self, coll: Collection, rows: int, seconds: float) -> None:
        if rows <= self.max_rows:
            last = self._cost.get(coll)
            self._cost[coll] = seconds if last is None else last + 0.2 * (seconds - last)


