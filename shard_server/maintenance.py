"""One background thread that trains, absorbs and compacts collections, so writes and searches never wait on it."""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Callable

from shardsearch.shard_server import memory
from shardsearch.shard_server.index import Collection

logger = logging.getLogger(__name__)

TICK_S = 1.0  # how often collections that went quiet are re-checked (an idle buffer gets absorbed)


class Maintenance:
    def __init__(self, thread_init: Callable[[], None] = lambda: None) -> None:
        self._queue: queue.Queue[Collection | None] = queue.Queue()
        self._queued: set[int] = set()
        self._seen: weakref.WeakSet[Collection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread_init = thread_init
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._thread.start()

    def nudge(self, collection: Collection) -> None:
        """Queues the collection if it has pending work (cheap; safe to call after every write)."""
        self._seen.add(collection)
        if collection.pending_work() is None:
            return
        with self._lock:
            if id(collection) in self._queued:
                return
            self._queued.add(id(collection))
        self._queue.put(collection)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        self._thread_init()
        worked = False
        while True:
            try:
                collection = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                if worked:  # idle after work: give what it freed back (see shard_server.memory)
                    memory.trim()
                    worked = False
                for seen in list(self._seen):
                    self.nudge(seen)
                continue
            if collection is None:
                return
            with self._lock:
                self._queued.discard(id(collection))
            worked = True
            try:
                collection.maintain()
            except Exception:
                logger.exception("maintenance of collection %s failed", collection.spec.name)
