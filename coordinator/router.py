"""Where each request goes: the ring layout this coordinator knows (shardsearch.topology), kept current.

The layout is read from the shards at start-up and every `poll_s`, and at once when a shard refuses a request
routed by an older layout (ABORTED); the request is then routed again and re-sent, so a coordinator that missed an
announcement costs its callers one retry, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable, Sequence

import grpc
import numpy as np

from coordinator.shards import Outcome, Shard, ShardPool
from shardsearch import logs
from shardsearch.errors import DeadlineExceeded
from shardsearch.ring import key_hashes
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, shard_pb2

logger = logging.getLogger(__name__)

LAYOUT_RETRIES = 3  # a request refused for a stale layout is routed again and re-sent this many times
READ_TIMEOUT_S = 2.0
STALE_PAUSE_S = 0.05


class Router:
    def __init__(self, pool: ShardPool, topology: admin_pb2.Topology, poll_s: float = 2.0) -> None:
        self._pool = pool
        self.layout = Layout.of(topology)
        self._poll_s = poll_s
        self._reading: asyncio.Future[bool] | None = None

    @property
    def version(self) -> int:
        """The version requests carry: at least 1, so a shard never takes a coordinator's request as unchecked."""
        return max(1, self.layout.version)

    def adopt(self, topology: admin_pb2.Topology) -> bool:
        """Switches to `topology` if it is newer than the one in use."""
        if topology.version <= self.layout.version:
            return False
        self.layout = Layout.of(topology)
        self._pool.set_members(self.layout.members())
        move = topology.move
        logger.info(
            "ring layout %d: %s%s", topology.version, ", ".join(s.name for s in topology.shards),
            f" ({admin_pb2.Move.Kind.Name(move.kind)} {move.shard}, {admin_pb2.Move.Phase.Name(move.phase)})"
            if self.layout.moving else "",
        )
        return True

    async def refresh(self, timeout: float = READ_TIMEOUT_S) -> bool:
        """Reads the layout from every replica of every shard; the newest wins. Concurrent callers share one read.
        Returns whether the layout changed."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(timeout))
            self._reading.add_done_callback(lambda _: setattr(self, "_reading", None))
        return await asyncio.shield(self._reading)

    async def _read(self, timeout: float) -> bool:
        replicas = [replica for shard in self._pool.shards for replica in shard.replicas]
        answers = await asyncio.gather(*(self._ask(replica.stub, timeout) for replica in replicas))
        layouts = [layout for layout in answers if layout is not None]
        return bool(layouts) and self.adopt(max(layouts, key=lambda t: t.version))

    @staticmethod
    async def _ask(stub: object, timeout: float) -> admin_pb2.Topology | None:
        try:
            answer = await stub.GetTopology(  # type: ignore[attr-defined]
                shard_pb2.ShardGetTopologyRequest(), timeout=timeout, metadata=logs.outgoing_metadata()
            )
        except grpc.aio.AioRpcError:
            return None
        return answer.topology

    async def store_initial(self, timeout: float = READ_TIMEOUT_S) -> bool:
        """With no layout stored on any shard yet, stores the flags' layout as version 1 on every replica of every
        shard, so from then on the stored layout, not each coordinator's flags, decides (a coordinator restarted
        with other flags keeps routing as before). Coordinators that race store the same layout, or the loser
        adopts the winner's. Returns whether the layout in use is stored."""
        if self.layout.version:
            return True
        initial = admin_pb2.Topology()
        initial.CopyFrom(self.layout.topology)
        initial.version = 1
        outcomes = await asyncio.gather(*(
            self._pool.write(shard, "SetTopology", shard_pb2.ShardSetTopologyRequest(topology=initial, shard=shard.name),
                             timeout, every_replica=True)
            for shard in self._pool.shards
        ))
        if all(o.ok for o in outcomes):
            self.adopt(initial)
            logger.info("stored the ring layout from the flags on every shard (version 1)")
            return True
        await self.refresh(timeout)  # another coordinator may have stored its own first
        return bool(self.layout.version)

    async def stale(self, outcomes: Sequence[Outcome]) -> bool:
        """True (after re-reading the layout) if a shard refused a request for its stale layout."""
        if not any(o.error is not None and o.error.code == grpc.StatusCode.ABORTED for o in outcomes):
            return False
        if not await self.refresh():
            await asyncio.sleep(STALE_PAUSE_S)  # a shard is still storing the new layout
            await self.refresh()
        return True

    async def routed(
        self, attempt: Callable[[float], Awaitable[list[Outcome]]], deadline: float
    ) -> list[Outcome]:
        """The one retry rule for a request routed by the ring: `attempt(timeout)` routes by the current layout,
        stamps its version on every shard request and sends them within `timeout`; when a shard refuses them for a
        stale layout (ABORTED) the layout is re-read and the attempt made again, at most LAYOUT_RETRIES times, all
        within the monotonic `deadline` (DEADLINE_EXCEEDED once it has passed). Returns the last attempt's outcomes."""
        for _ in range(LAYOUT_RETRIES):
            outcomes = await attempt(remaining(deadline))
            if not await self.stale(outcomes):
                break
        return outcomes

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            with contextlib.suppress(Exception):
                await self.refresh()
                if not self.layout.version:
                    await self.store_initial()

    # ---- routing ----------------------------------------------------------------------------------------------

    def write_groups(self, ids: Sequence[str]) -> list[tuple[Shard, np.ndarray]]:
        """(shard, rows of `ids`) for every shard that must get a write: the owner on each ring of the layout."""
        hashes = key_hashes(ids)
        rows_by_shard: dict[str, list[np.ndarray]] = {}
        for ring in self.layout.write_rings():
            owners = ring.owners_of_hashes(hashes)
            for index in np.unique(owners):
                rows_by_shard.setdefault(ring.shards[index], []).append(np.flatnonzero(owners == index))
        return [
            (self._pool.by_name[name], parts[0] if len(parts) == 1 else np.union1d(*parts))
            for name, parts in rows_by_shard.items()
        ]

    def read_groups(self, ids: Sequence[str]) -> list[tuple[Shard, list[str]]]:
        """(shard, ids) for reads by id: each id's owner on the read ring."""
        ring = self.layout.read_ring()
        owners = ring.owners_of_hashes(key_hashes(ids))
        return [
            (self._pool.by_name[ring.shards[s]], [ids[i] for i in np.flatnonzero(owners == s)])
            for s in np.unique(owners)
        ]

    def read_owner(self, item_id: str) -> Shard:
        return self._pool.by_name[self.layout.read_ring().owner(item_id)]

    def search_shards(self) -> list[Shard]:
        """Every shard of the layout (both rings during a move)."""
        return [self._pool.by_name[name] for name in self.layout.search_names()]

    def list_shards(self) -> list[Shard]:
        """The shards that hold every id exactly once: the read ring's."""
        return [self._pool.by_name[name] for name in self.layout.read_ring().shards]

    @property
    def dedupe(self) -> bool:
        """Whether an id may come back from two shards (during a move)."""
        return self.layout.moving


def remaining(deadline: float) -> float:
    """Seconds left before a monotonic deadline; DEADLINE_EXCEEDED once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the call's deadline passed while it was being served")
    return left
