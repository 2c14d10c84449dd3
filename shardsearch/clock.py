"""Write versions: a hybrid clock (wall-clock nanoseconds, strictly increasing within a process).

Replicas keep, per id, the write with the highest version, so versions must grow with real time across processes:
two writes to one id through different coordinators are ordered by their clocks (NTP keeps them within
milliseconds), and two writes through one coordinator are always ordered as sent.
"""

from __future__ import annotations

import threading
import time


class HybridClock:
    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last
