"""The ring layout a shard serves under (resharding): which requests it refuses, which ids it keeps, and storing a
new layout only once the writes admitted under older ones are applied.

Requests carry the layout version they were routed by; one routed by an older layout than the stored one is refused
with ABORTED (the coordinator re-reads the layout and sends it again). The version moves only with a stored layout:
a request naming a newer one is served (that coordinator read it from another shard, where it was stored first).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import numpy as np

from shardsearch import topology
from shardsearch.errors import Aborted
from shardsearch.offload import Offload
from shardsearch.shard_server.storage import write_atomically
from shardsearch.v1 import shard_pb2

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0  # longest SetTopology waits for writes admitted under an older layout

Keep = Callable[[np.ndarray], np.ndarray]


class RingLayout:
    """The stored layout of one shard; `apply_keep(keep)` applies a new ownership to its collections (returns the
    items dropped)."""

    def __init__(self, name: str, path: Path | None, run: Offload, apply_keep: Callable[[Keep | None], Awaitable[int]]):
        self.name = name
        self.stored = shard_pb2.ShardSetTopologyRequest()
        """The ring layout this shard last stored, and its name on that ring (version 0: none)."""
        self.version = 0
        """Requests routed by an older layout are refused (ABORTED)."""
        self._path = path
        self._run = run
        self._apply_keep = apply_keep
        self._pending: shard_pb2.ShardSetTopologyRequest | None = None
        """A layout being stored (writes under older ones are already refused, so GetTopology shows it)."""
        self._writes_by_version: collections.Counter[int] = collections.Counter()
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Reads the stored layout from the data directory (at start-up, before serving)."""
        if self._path is not None and self._path.exists():
            self.stored = shard_pb2.ShardSetTopologyRequest.FromString(self._path.read_bytes())
            self.version = self.stored.topology.version
            logger.info("ring layout %d (this shard is %s on it)", self.version, self.stored.shard)

    def shown(self) -> shard_pb2.ShardGetTopologyResponse:
        """What GetTopology answers: the layout being stored, else the stored one."""
        shown = self._pending or self.stored
        return shard_pb2.ShardGetTopologyResponse(topology=shown.topology, shard=shown.shard)

    def check(self, version: int) -> None:
        """Refuses a request routed by an older ring layout than this shard's (0: not checked)."""
        if version and version < self.version:
            raise Aborted(
                f"routed by ring layout {version}, but shard {self.name} has layout {self.version}; "
                "re-read the layout and send the request again"
            )

    @contextlib.contextmanager
    def admitted(self, version: int) -> Iterator[None]:
        """A write admitted under `version` (counted until applied, so a new layout can wait for it)."""
        self.check(version)
        self._writes_by_version[version] += 1
        try:
            yield
        finally:
            self._writes_by_version[version] -= 1
            if not self._writes_by_version[version]:
                del self._writes_by_version[version]

    def keep(self) -> Keep | None:
        """Which ids this shard keeps under its stored layout. None (all) before any move: the initial layout
        (version 1, stored from the first coordinator's flags) cannot tell how data loaded before it was placed, so
        nothing is dropped on its word."""
        if self.stored.topology.version <= 1:
            return None
        layout, name = topology.Layout.of(self.stored.topology), self.stored.shard
        return lambda hashes: layout.owned(name, hashes)

    async def store(self, request: shard_pb2.ShardSetTopologyRequest) -> int:
        """Stores a newer layout, then waits for the writes admitted under older ones, then drops what this shard
        no longer owns. Setting the stored layout again is a no-op; an older one is refused."""
        async with self._lock:
            version = request.topology.version
            stored = self.stored.topology.version
            current = self.stored.topology.SerializeToString(deterministic=True)
            same = request.topology.SerializeToString(deterministic=True) == current
            if request.HasField("replaces") and not same:
                if request.replaces.SerializeToString(deterministic=True) != current or version < stored:
                    raise Aborted(f"shard {self.name} has ring layout {stored}, not the one to replace")
                return await self._replace(request)
            if version < stored or (version == stored and request.SerializeToString(deterministic=True)
                                    != self.stored.SerializeToString(deterministic=True)):
                raise Aborted(f"shard {self.name} already has ring layout {stored} (offered {version})")
            if version == stored:
                return 0
            previous, self.version = self.version, version  # refuse older writes from now on
            self._pending = request
            try:
                await self._drain(version)
                if self._path is not None:
                    await self._run(write_atomically, self._path, request.SerializeToString())
            except BaseException:
                self.version = previous  # not stored: GetTopology must still agree with the refusals
                raise
            finally:
                self._pending = None
            self.stored = request
            dropped = await self._apply_keep(self.keep())
            logger.info("ring layout %d stored (this shard is %s on it); %d items of other shards dropped",
                        version, request.shard, dropped)
            return dropped

    async def _replace(self, request: shard_pb2.ShardSetTopologyRequest) -> int:
        """The compare-and-set branch of `store` (under its lock): a rival layout of the same version gives way to
        the one the proposers settled on."""
        stored = shard_pb2.ShardSetTopologyRequest(topology=request.topology, shard=request.shard)
        if self._path is not None:
            await self._run(write_atomically, self._path, stored.SerializeToString())
        self.stored, self.version = stored, request.topology.version
        dropped = await self._apply_keep(self.keep())
        logger.warning("ring layout %d replaced by the one the coordinators settled on (this shard is %s on it)",
                       request.topology.version, request.shard)
        return dropped

    async def _drain(self, version: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while any(v < version for v in self._writes_by_version) and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def adopt(self, response: shard_pb2.ShardGetTopologyResponse) -> None:
        """A peer's layout (while catching up), if newer than this replica's."""
        if response.topology.version > self.stored.topology.version and response.shard:
            await self.store(shard_pb2.ShardSetTopologyRequest(topology=response.topology, shard=response.shard))
