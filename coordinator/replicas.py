"""What the shard pool (coordinator/shards.py) is made of: a shard's replicas with the state the pool keeps of each
(requests outstanding, avoidance after a failure, fencing after a missed write, its search stream), one call's
outcome, the replication settings, and the pool's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardsearch.coordinator.streams import SearchStream
from shardsearch.errors import ShardSearchError
from shardsearch.metrics import LATENCY_BUCKETS
from shardsearch.v1 import shard_pb2_grpc


@dataclass(eq=False)
class Replica:
    shard: str
    index: int
    address: str
    channel: grpc.aio.Channel
    stub: shard_pb2_grpc.ShardServiceStub
    outstanding: int = 0
    avoid_until: float = 0.0
    fenced: bool = False
    """Missed a write that another replica applied: no reads from it until it has accepted a Resync."""
    missed_version: int = 0
    missed_collections: set[str] = field(default_factory=set)
    """Collections it missed writes to: their cached answers are invalidated again once it has accepted a resync
    (another coordinator, not knowing of the fence, may have cached an answer this replica gave meanwhile)."""
    owner: "Shard | None" = None
    stream: SearchStream | None = None
    """Searches go over this long-lived stream (see coordinator.streams) while the replica supports it."""


@dataclass(eq=False)
class Shard:
    name: str
    replicas: list[Replica]
    turn: int = 0  # rotates the choice among equally loaded replicas

    @property
    def address(self) -> str:
        return "|".join(replica.address for replica in self.replicas)


@dataclass(frozen=True)
class Outcome:
    """One shard's answer: a response or an error, and the replica that gave it (None for a replicated write)."""

    shard: Shard
    response: Any = None
    error: ShardSearchError | None = None
    replica: Replica | None = None
    seconds: float = 0.0
    """How long the answering call took (explain)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Replication:
    write_quorum: int = 1
    """Replicas that must have a write before it is acknowledged; 0 = all of them."""
    hedge_delay_s: float = 0.0
    """Send a read to a second replica when the first has not answered after this long; 0 = never."""


class ShardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "shardsearch_coordinator_shard_request_duration_seconds", "Shard RPC latency seen by the coordinator.",
            ["shard", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.errors = Counter(
            "shardsearch_coordinator_shard_errors", "Failed shard RPCs, by shard and gRPC status code.",
            ["shard", "code"], registry=registry,
        )
        self.failovers = Counter(
            "shardsearch_coordinator_shard_failovers", "Reads retried on another replica after a failure.",
            ["shard"], registry=registry,
        )
        self.hedges = Counter(
            "shardsearch_coordinator_shard_hedged_requests", "Reads also sent to a second replica (hedge delay).",
            ["shard"], registry=registry,
        )
        self.fenced = Gauge(
            "shardsearch_coordinator_shard_fenced_replicas", "Replicas not read from: they missed a write and have "
            "not yet accepted a resync.", ["shard"], registry=registry,
        )
        self.resyncs = Counter(
            "shardsearch_coordinator_shard_resyncs", "Resync requests accepted by replicas that missed a write.",
            ["shard"], registry=registry,
        )
