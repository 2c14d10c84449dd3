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
from typing import Any, Awaitable, Callable, Sequence

import grpc
import numpy as np

from shardsearch import logs
from shardsearch.coordinator.shards import Outcome, Shard, ShardPool
from shardsearch.errors import DeadlineExceeded, Unavailable
from shardsearch.ring import key_hashes
from shardsearch.topology import Layout
from shardsearch.v1 import admin_pb2, shard_pb2

logger = logging.getLogger(__name__)

LAYOUT_RETRIES = 3  # attempts in all (the first and two re-sends) for a request refused for a stale layout
READ_TIMEOUT_S = 2.0
STALE_PAUSE_S = 0.05
STALE_MIN_WAIT_S = 0.05  # what a refused call waits for the layout read at the least, even past its deadline
SETTLE_ROUNDS = 5


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

    def adopt(self, topology: admin_pb2.Topology, settled: bool = False) -> bool:
        """Switches to `topology` if it is newer than the one in use, or (`settled`) the rival that replaced the
        one in use at the same version (see `claim`)."""
        if topology.version < self.layout.version or topology.version == 0 or (
                topology.version == self.layout.version and not (settled and not _same(topology, self.layout.topology))):
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
        replicas = [(shard, replica) for shard in self._pool.shards for replica in shard.replicas]
        answers = await asyncio.gather(*(self._ask(replica.stub, timeout) for _, replica in replicas))
        layouts = [layout for layout in answers if layout is not None]
        if not layouts:
            return False
        winner = settled(layouts)
        if winner.version and any(t.version == winner.version and not _same(t, winner) for t in layouts):
            # A split left by proposers that raced (one died before settling it): settle it now.
            held = [(shard.name, t) for (shard, _), t in zip(replicas, answers) if t is not None]
            winner = pick(held, winner.version) or winner
            logger.warning("ring layout %d: the shards hold two versions of it; settling on one", winner.version)
            try:
                await self._settle(winner, [r for r, t in zip(replicas, answers) if t is not None], layouts, timeout)
            except Unavailable as exc:
                logger.warning("settling the ring layout failed (%s); trying again at the next read", exc)
                return False
        return self.adopt(winner, settled=True)  # what the shards hold wins, even over a rival at the same version

    @staticmethod
    async def _ask(stub: object, timeout: float) -> admin_pb2.Topology | None:
        try:
            answer = await stub.GetTopology(  # type: ignore[attr-defined]
                shard_pb2.ShardGetTopologyRequest(), timeout=timeout, metadata=logs.outgoing_metadata()
            )
        except grpc.aio.AioRpcError:
            return None
        return answer.topology

    async def claim(self, target: admin_pb2.Topology, names: Sequence[str], timeout: float) -> bool:
        """Stores a new layout version on every replica of the shards `names`, as a compare-and-set against rival
        proposals: another coordinator may be storing a different layout at the same version (two AddShard at once,
        two first starts with different flags), each winning some replicas. Then every proposer settles on the same
        one (the smaller serialisation: no coordination needed) and stores it, with `replaces`, over the rival
        wherever that landed. Returns True if `target` is stored everywhere, False if another layout won (it is
        stored and adopted instead: nothing of `target` is left). Raises Unavailable if a replica cannot be reached
        (what it holds is then unknown; the caller retries)."""
        shards = [self._pool.by_name[name] for name in names]
        outcomes = await asyncio.gather(*(
            self._pool.write(shard, "SetTopology", shard_pb2.ShardSetTopologyRequest(topology=target, shard=shard.name),
                             timeout, every_replica=True)
            for shard in shards
        ))
        if all(o.ok for o in outcomes):
            return True
        if not any(o.error is not None and o.error.code == grpc.StatusCode.ABORTED for o in outcomes):
            raise Unavailable(f"ring layout {target.version} reached {sum(o.ok for o in outcomes)} of "
                              f"{len(outcomes)} shards; " + "; ".join(str(o.error) for o in outcomes if not o.ok))
        replicas = [(shard, replica) for shard in shards for replica in shard.replicas]
        stored = await asyncio.gather(*(self._ask(replica.stub, timeout) for _, replica in replicas))
        if any(layout is None for layout in stored):
            raise Unavailable(f"ring layout {target.version}: a rival layout was found, and not every replica "
                              "could say which it holds")
        if any(layout.version > target.version for layout in stored if layout is not None):
            await self.refresh(timeout)  # lost to a change that has already moved on (ours is stored nowhere)
            return False
        winner = pick([(shard.name, t) for (shard, _), t in zip(replicas, stored)], target.version) or target
        await self._settle(winner, replicas, stored, timeout)  # type: ignore[arg-type]
        ours = _same(winner, target)
        logger.warning("ring layout %d was proposed by two coordinators at once; %s", target.version,
                       "ours was kept" if ours else "the other one was kept and ours withdrawn")
        if not ours:
            self.adopt(winner, settled=True)
        return ours

    async def _settle(self, winner: admin_pb2.Topology, replicas: Sequence[tuple[Shard, Any]],
                      stored: Sequence[admin_pb2.Topology], timeout: float) -> None:
        """Stores `winner` on every replica that holds something else: over a rival of the same version with
        `replaces` (compare-and-set), plainly over an older one; reads them again until they all hold it (a rival's
        request may land in between)."""
        for _ in range(SETTLE_ROUNDS):
            await self._settle_once(winner, replicas, stored, timeout)
            again = await asyncio.gather(*(self._ask(replica.stub, timeout) for _, replica in replicas))
            if any(t is None for t in again):
                raise Unavailable(f"settling ring layout {winner.version}: a replica did not answer")
            stored = again  # type: ignore[assignment]
            if all(_same(t, winner) or t.version > winner.version for t in stored):
                return
        raise Unavailable(f"settling ring layout {winner.version}: the replicas kept changing")

    async def _settle_once(self, winner: admin_pb2.Topology, replicas: Sequence[tuple[Shard, Any]],
                           stored: Sequence[admin_pb2.Topology], timeout: float) -> None:
        for (shard, replica), layout in zip(replicas, stored):
            if _same(layout, winner) or layout.version > winner.version:
                continue
            request = shard_pb2.ShardSetTopologyRequest(topology=winner, shard=shard.name)
            if layout.version == winner.version:
                request.replaces.CopyFrom(layout)
            try:
                await replica.stub.SetTopology(request, timeout=timeout, metadata=logs.outgoing_metadata())
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # ABORTED: another proposer replaced it first
                    raise Unavailable(f"settling ring layout {winner.version} on {replica.address}: "
                                      f"{exc.details()}") from exc

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
        try:
            ours = await self.claim(initial, self._pool.names, timeout)
        except Unavailable as exc:
            logger.info("ring layout from the flags not stored yet: %s", exc)
            return False
        if ours:
            self.adopt(initial)
            logger.info("stored the ring layout from the flags on every shard (version 1)")
        return bool(self.layout.version)

    async def stale(self, outcomes: Sequence[Outcome], wait: float = READ_TIMEOUT_S) -> bool:
        """True (after re-reading the layout) if a shard refused a request for its stale layout. The caller waits
        at most `wait` seconds for the read (which goes on for the next caller: a replica that does not answer
        takes READ_TIMEOUT_S to give up on)."""
        if not any(o.error is not None and o.error.code == grpc.StatusCode.ABORTED for o in outcomes):
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                if not await self.refresh():
                    await asyncio.sleep(STALE_PAUSE_S)  # a shard is still storing the new layout
                    await self.refresh()
        return True

    async def routed(
        self, attempt: Callable[[float], Awaitable[list[Outcome]]], deadline: float
    ) -> list[Outcome]:
        """The one retry rule for a request routed by the ring: `attempt(timeout)` routes by the current layout,
        stamps its version on every shard request and sends them within `timeout`; when a shard refuses them for a
        stale layout (ABORTED) the layout is re-read and the attempt made again, LAYOUT_RETRIES attempts at most, all
        within the monotonic `deadline` (DEADLINE_EXCEEDED once it has passed). Returns the last attempt's outcomes."""
        for _ in range(LAYOUT_RETRIES):
            outcomes = await attempt(remaining(deadline))
            # The layout read is bounded by the caller's deadline (with a short floor, so that a call refused just
            # as its deadline passed still leaves the layout re-read for the next one).
            wait = min(READ_TIMEOUT_S, max(STALE_MIN_WAIT_S, deadline - time.monotonic()))
            if not await self.stale(outcomes, wait):
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

    def search_shards(self) -> list[Shard]:
        """Every shard of the layout (both rings during a move)."""
        return [self._pool.by_name[name] for name in self.layout.search_names()]

    def spread(self) -> int:
        """Over how many shards a collection's items are spread, at the fewest: during a move the smaller of the two
        rings (a shard there may still hold 1 / that of them), which sets a fitted re-ranking depth."""
        return min(len(ring.shards) for ring in self.layout.write_rings())

    def list_shards(self) -> list[Shard]:
        """The shards that hold every id exactly once: the read ring's."""
        return [self._pool.by_name[name] for name in self.layout.read_ring().shards]

    @property
    def dedupe(self) -> bool:
        """Whether an id may come back from two shards (during a move)."""
        return self.layout.moving


def settled(layouts: Sequence[admin_pb2.Topology]) -> admin_pb2.Topology:
    """The layout every proposer settles on: the newest version, and among rivals at it the smallest
    serialisation (any fixed rule works; every coordinator must apply the same one)."""
    newest = max(t.version for t in layouts)
    return min((t for t in layouts if t.version == newest), key=lambda t: t.SerializeToString(deterministic=True))


def pick(held: Sequence[tuple[str, admin_pb2.Topology]], version: int) -> admin_pb2.Topology | None:
    """Which of the rival layouts at `version` that replicas hold (shard name, layout) is kept, or None if none
    is held. Rivals proposed at one version all include the shards of the layout before it (every proposal
    announces itself to the old ring too), and each replica of those holds exactly one of them: a rival held by
    every one of those replicas was first everywhere and is kept (its proposer saw no refusal and went on);
    otherwise no proposer did, and every one of them keeps the one `settled` picks."""
    rivals = {t.SerializeToString(deterministic=True): t for _, t in held if t.version == version}
    if not rivals:
        return None
    common = set.intersection(*({name for name, _ in Layout.of(t).members()} for t in rivals.values()))
    on_common = {t.SerializeToString(deterministic=True) for name, t in held if name in common}
    if len(on_common) == 1 and (only := next(iter(on_common))) in rivals:
        return rivals[only]
    return settled(list(rivals.values()))


def _same(a: admin_pb2.Topology, b: admin_pb2.Topology) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def remaining(deadline: float) -> float:
    """Seconds left before a monotonic deadline; DEADLINE_EXCEEDED once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the call's deadline passed while it was being served")
    return left
