"""The shard pool: every shard's replicas on long-lived channels; reads with fail-over and hedging, replicated writes.

Reads (Search, Get, Stats, ListCollections) go to one replica per shard: the one with the fewest requests
outstanding from this coordinator, skipping replicas that just failed. A replica answering UNAVAILABLE or
RESOURCE_EXHAUSTED is replaced by the next one within the same call, while the deadline lasts. With a hedge delay,
a read still unanswered after it is also sent to a second replica, and the first answer wins.

Writes go to every replica of the owning shard, stamped with one version (so replicas apply them idempotently and in
any order). The rule: a write is acknowledged once `write_quorum` replicas (0 = all) have it on disk (their
write-ahead logs are fsynced before they answer). A replica that misses a write another one applied is fenced: this
coordinator stops reading from it and asks it to catch up from its peers (Resync), retrying until it accepts; once
it has accepted, it refuses reads itself until it has caught up. Collection definitions (Create/Drop) need every
replica. The replicas' state, outcomes, settings and metrics are in coordinator/replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

import grpc

from shardsearch import grpcserver, logs
from shardsearch.coordinator.replicas import Outcome, Replica, Replication, Shard, ShardMetrics
from shardsearch.coordinator.streams import SearchStream, StreamFailed
from shardsearch.errors import AnswerTooLarge, ShardSearchError, from_rpc_error, from_status
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

__all__ = ["Outcome", "Replica", "Replication", "Shard", "ShardMetrics", "ShardPool", "where"]

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
AVOID_S = 1.0  # a replica that failed a read is tried last for this long
RESYNC_TIMEOUT_S = 5.0
RESYNC_MAX_BACKOFF_S = 5.0
DEFAULT_REPLICATION = Replication()  # a write quorum of 1, no hedging


class ShardPool:
    def __init__(
        self, shards: Sequence[tuple[str, Sequence[str]]], metrics: ShardMetrics,
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        replication: Replication = DEFAULT_REPLICATION,
        clock: Callable[[], int] = time.time_ns, search_streams: bool = True,
    ) -> None:
        self._connect = channel_factory or _insecure_channel
        self._streams = search_streams
        self._configured = {name: list(addresses) for name, addresses in shards}
        """Addresses from this coordinator's flags, by shard name: they win over the ones a stored layout names."""
        self.shards: list[Shard] = [self._shard(name, addresses) for name, addresses in shards]
        self.by_name = {shard.name: shard for shard in self.shards}
        self._metrics = metrics
        self._replication = replication
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired: list[Shard] = []
        self.on_resynced: Callable[[set[str]], Awaitable[None]] | None = None
        """Awaited with the collections a fenced replica missed writes to, once it has accepted a resync."""

    def _shard(self, name: str, addresses: Sequence[str]) -> Shard:
        replicas = [
            Replica(name, i, address, channel := self._connect(address), shard_pb2_grpc.ShardServiceStub(channel))
            for i, address in enumerate(addresses)
        ]
        shard = Shard(name, replicas)
        for replica in replicas:
            replica.owner = shard
        return shard

    @property
    def names(self) -> list[str]:
        return [shard.name for shard in self.shards]

    def set_members(self, shards: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Makes these the pool's shards (a new ring layout): shards kept as they were keep their channels and
        state, new ones are dialled, and the channels of the others are closed when the pool closes (calls may
        still be in flight on them).

        A ring layout identifies shards by name; the addresses it carries are the last ones it was told. Where this
        coordinator's flags name a shard, the flags' addresses are used instead: addresses change when pods move or
        a local cluster restarts on new ports, names do not."""
        members = []
        for name, addresses in shards:
            addresses = self._configured.get(name, addresses)
            shard = self.by_name.get(name)
            if shard is None or [r.address for r in shard.replicas] != list(addresses):
                if shard is not None:
                    self._retired.append(shard)
                shard = self._shard(name, addresses)
            members.append(shard)
        names = {name for name, _ in shards}
        self._retired.extend(s for s in self.shards if s.name not in names)
        self.shards = members
        self.by_name = {shard.name: shard for shard in members}

    # ---- reads ----------------------------------------------------------------------------------------------

    async def call(self, shard: Shard, method: str, request: Any, timeout: float) -> Outcome:
        """Reads from one replica, failing over (and hedging) within `timeout`; never raises."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        candidates = self._read_order(shard)
        if not candidates:
            return Outcome(shard, error=ShardSearchError(
                f"shard {shard.name}: every replica missed a write and is catching up; retry shortly",
                grpc.StatusCode.UNAVAILABLE,
            ))
        if self._replication.hedge_delay_s > 0 and len(candidates) > 1:
            return await self._hedged(shard, candidates, method, request, deadline)
        outcome = await self._attempt(candidates[0], method, request, timeout)
        for replica in candidates[1:]:
            if not _retryable(outcome):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._metrics.failovers.labels(shard.name).inc()
            outcome = await self._attempt(replica, method, request, remaining)
        return outcome

    async def _hedged(
        self, shard: Shard, candidates: list[Replica], method: str, request: Any, deadline: float
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Future[Outcome], Replica] = {}
        next_index, hedged, last = 0, False, None

        def launch() -> None:
            nonlocal next_index
            replica = candidates[next_index]
            next_index += 1
            pending[asyncio.ensure_future(self._attempt(replica, method, request, deadline - loop.time()))] = replica

        launch()
        try:
            while pending:
                hedge = not hedged and next_index < len(candidates)
                done, _ = await asyncio.wait(
                    pending, timeout=self._replication.hedge_delay_s if hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    hedged = True
                    self._metrics.hedges.labels(shard.name).inc()
                    launch()
                    continue
                for task in done:
                    pending.pop(task)
                    outcome = task.result()
                    if not _retryable(outcome):
                        return outcome
                    last = outcome
                if not pending and next_index < len(candidates) and loop.time() < deadline:
                    self._metrics.failovers.labels(shard.name).inc()
                    launch()
            assert last is not None
            return last
        finally:
            for task in pending:
                task.cancel()

    def _read_order(self, shard: Shard) -> list[Replica]:
        """Readable replicas, best first: not recently failed, fewest outstanding, then round robin."""
        now = time.monotonic()
        n = len(shard.replicas)
        shard.turn = (shard.turn + 1) % n
        readable = [r for r in shard.replicas if not r.fenced]
        return sorted(readable, key=lambda r: (r.avoid_until > now, r.outstanding, (r.index - shard.turn) % n))

    async def _attempt(self, replica: Replica, method: str, request: Any, timeout: float) -> Outcome:
        shard = replica.owner
        assert shard is not None
        start = time.perf_counter()
        replica.outstanding += 1
        try:
            if method == "Search" and self._streams and (replica.stream is None or replica.stream.supported):
                if replica.stream is None:
                    replica.stream = SearchStream(replica.stub)
                try:
                    response = await replica.stream.search(request, timeout)
                except StreamFailed as failed:
                    if replica.stream.supported and not failed.status_lost:
                        return self._failed(replica, failed.code, from_status(failed.code, failed.details, where(replica)))
                    # an older shard (unary for a while), or a stream whose status grpc.aio lost: a unary call tells
                    response = await self._unary(replica, method, request, timeout - (time.perf_counter() - start))
            else:
                response = await self._unary(replica, method, request, timeout)
            replica.avoid_until = 0.0
            return Outcome(shard, response=response, replica=replica, seconds=time.perf_counter() - start)
        except grpc.aio.AioRpcError as exc:
            return self._failed(replica, exc.code(), from_rpc_error(exc, where(replica)))
        finally:
            replica.outstanding -= 1
            self._metrics.latency.labels(replica.shard, method).observe(time.perf_counter() - start)

    @staticmethod
    async def _unary(replica: Replica, method: str, request: Any, timeout: float) -> Any:
        return await getattr(replica.stub, method)(request, timeout=max(timeout, 0.001), metadata=logs.outgoing_metadata())

    def _failed(self, replica: Replica, code: grpc.StatusCode, error: ShardSearchError) -> Outcome:
        assert replica.owner is not None
        self._metrics.errors.labels(replica.shard, code.name).inc()
        if code in RETRYABLE or code == grpc.StatusCode.CANCELLED:
            replica.avoid_until = time.monotonic() + AVOID_S
        return Outcome(replica.owner, error=error, replica=replica)

    async def fan_out(self, method: str, requests: Sequence[tuple[Shard, Any]], timeout: float) -> list[Outcome]:
        """Reads: each (shard, request) concurrently; outcomes in the same order. A single read is awaited in the
        caller's task (gather would wrap it in a task of its own: one event-loop hop more)."""
        if len(requests) == 1:
            (shard, request), = requests
            return [await self.call(shard, method, request, timeout)]
        return list(await asyncio.gather(*(self.call(s, method, r, timeout) for s, r in requests)))

    async def broadcast(self, method: str, request: Any, timeout: float) -> list[Outcome]:
        """Reads from every shard."""
        return await self.fan_out(method, [(shard, request) for shard in self.shards], timeout)

    # ---- writes ---------------------------------------------------------------------------------------------

    async def write(
        self, shard: Shard, method: str, request: Any, timeout: float, *, version: int = 0,
        every_replica: bool = False, benign: grpc.StatusCode | None = None,
    ) -> Outcome:
        """Sends a write to every replica of `shard`; ok once the quorum has it (see the module docstring).

        `benign` is an error that counts as applied (ALREADY_EXISTS for a create); if every replica answers it,
        the outcome is that error.
        """
        outcomes = await asyncio.gather(*(self._attempt(r, method, request, timeout) for r in shard.replicas))
        refused = [o for o in outcomes if o.error is not None and o.error.code == grpc.StatusCode.ABORTED]
        if refused:  # routed by a stale ring layout: nobody missed anything; the caller routes it again
            return Outcome(shard, error=refused[0].error)
        took = [o.ok or (benign is not None and o.error.code == benign) for o in outcomes]  # type: ignore[union-attr]
        applied = [o for o, t in zip(outcomes, took) if t]
        missed = [o for o, t in zip(outcomes, took) if not t]
        if applied and missed:
            for outcome in missed:
                assert outcome.replica is not None and outcome.error is not None
                outcome.replica.missed_collections.add(_collection_of(request))
                self._fence(outcome.replica, version or self._clock(),
                            f"missed {method} (replica {outcome.replica.index}: {outcome.error.code.name})")
        n = len(shard.replicas)
        needed = n if every_replica or self._replication.write_quorum <= 0 else min(self._replication.write_quorum, n)
        if len(applied) >= needed:
            ok = [o for o in applied if o.ok]
            return Outcome(shard, response=ok[0].response) if ok else Outcome(shard, error=applied[0].error)
        error = _most_telling([o.error for o in missed if o.error is not None])
        if applied:
            error = ShardSearchError(
                f"{method} reached {len(applied)} of {n} replicas of {shard.name}, {needed} needed: {error}", error.code
            )
        return Outcome(shard, error=error)

    async def write_fan_out(
        self, method: str, requests: Sequence[tuple[Shard, Any]], timeout: float, **kwargs: Any
    ) -> list[Outcome]:
        return list(await asyncio.gather(*(self.write(s, method, r, timeout, **kwargs) for s, r in requests)))

    async def write_broadcast(self, method: str, request: Any, timeout: float, **kwargs: Any) -> list[Outcome]:
        return await self.write_fan_out(method, [(shard, request) for shard in self.shards], timeout, **kwargs)

    def _fence(self, replica: Replica, version: int, reason: str) -> None:
        replica.missed_version = max(replica.missed_version, version)
        if replica.fenced:
            return
        replica.fenced = True
        self._update_fenced(replica.shard)
        logger.warning("replica %s of %s (%s) %s; not read from until it catches up",
                       replica.index, replica.shard, replica.address, reason)
        task = asyncio.create_task(self._resync(replica, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, replica: Replica, reason: str) -> None:
        """Asks the replica to catch up until it accepts; it then refuses reads itself until it has."""
        backoff = 0.1
        while True:
            version = replica.missed_version
            request = shard_pb2.ShardResyncRequest(reason=reason, missed_version=version)
            try:
                await replica.stub.Resync(request, timeout=RESYNC_TIMEOUT_S, metadata=logs.outgoing_metadata())
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    logger.error("replica %s of %s cannot catch up: %s; it stays fenced (restart it with --peers)",
                                 replica.index, replica.shard, exc.details())
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESYNC_MAX_BACKOFF_S)
                continue
            if replica.missed_version == version:  # nothing newer was missed while asking
                replica.fenced = False
                self._metrics.resyncs.labels(replica.shard).inc()
                self._update_fenced(replica.shard)
                logger.info("replica %s of %s accepted a resync; reads resume once it has caught up",
                            replica.index, replica.shard)
                missed, replica.missed_collections = replica.missed_collections, set()
                if self.on_resynced is not None:
                    await self.on_resynced(missed - {""})
                return

    def _update_fenced(self, shard: str) -> None:
        if shard in self.by_name:
            self._metrics.fenced.labels(shard).set(sum(r.fenced for r in self.by_name[shard].replicas))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        shards = [*self.shards, *self._retired]
        await asyncio.gather(*(r.stream.close() for shard in shards for r in shard.replicas if r.stream))
        await asyncio.gather(*(r.channel.close() for shard in shards for r in shard.replicas))


def where(replica: Replica) -> str:
    return f"shard {replica.shard} ({replica.address})"


def _retryable(outcome: Outcome) -> bool:
    """A failure another replica may not have: unreachable or overloaded (an answer too large is the same there)."""
    error = outcome.error
    return error is not None and error.code in RETRYABLE and not isinstance(error, AnswerTooLarge)


def _most_telling(errors: list[ShardSearchError]) -> ShardSearchError:
    """The error to report for a failed write: one about the request (not found, invalid...) over transport ones."""
    transport = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    return next((e for e in errors if e.code not in transport), errors[0])


def _insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=grpcserver.channel_options())


def _collection_of(request: Any) -> str:
    """The collection a shard write names: `collection` (a name, or for CreateCollection the spec) or `name`
    (DropCollection)."""
    collection = getattr(request, "collection", "")
    if not isinstance(collection, str):
        return collection.name
    return collection or getattr(request, "name", "")
