"""Coordinator configuration: defaults < SHARDSEARCH_COORDINATOR_* environment < command-line flags."""

from __future__ import annotations

from dataclasses import dataclass

from shardsearch.batching import BatchingConfig, from_settings
from shardsearch.config import from_env

ENV_PREFIX = "SHARDSEARCH_COORDINATOR_"


@dataclass(frozen=True)
class CoordinatorConfig:
    host: str = "127.0.0.1"
    """Interface to bind gRPC on (0.0.0.0 in containers)."""
    port: int = 50051
    """gRPC port; 0 picks a free one (see port_file)."""
    metrics_port: int = 9100
    """Prometheus /metrics port; 0 picks a free one, -1 turns it off."""
    shards: tuple[str, ...] = ()
    """Shard addresses in ring order, `host:port` or `name=host:port` (names default to shard-0, shard-1, ...)."""
    shard_pattern: str = ""
    """Alternative to `shards`: an address pattern with {i}, e.g. shard-{i}.shard.default.svc.cluster.local:50061."""
    shard_count: int = 0
    """How many shards `shard_pattern` expands to."""
    vnodes: int = 1024
    """Virtual nodes per shard on the consistent-hash ring."""
    default_timeout_s: float = 10.0
    """Deadline for a call whose client set none."""
    deadline_margin_s: float = 0.02
    """Time kept back from the caller's deadline for merging and answering (so partial results can be returned)."""
    stats_interval_s: float = 15.0
    """How often vector counts per collection are refreshed for the metrics."""
    port_file: str = ""
    """If set, the bound ports are written here as JSON once serving (for launchers)."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT so several coordinator processes share one port (one event loop per core)."""
    log_level: str = "INFO"

    batching: bool = True
    """Gather concurrent searches with the same collection and options into one RPC per shard."""
    batch_max_size: int = 256
    """Query rows per batch."""
    batch_max_queue_delay_us: int = 500
    """Longest a search waits for company while other batches are in flight (never when the coordinator is idle)."""
    batch_max_queue_size: int = 4096
    """Searches allowed to queue; beyond it new ones get RESOURCE_EXHAUSTED."""
    batch_max_in_flight: int = 1
    """Batches sent to the shards at once. 1 lets batches grow with load: measured on 2 cores, 64 concurrent unary
    searches ran at ~2.5x the rate of 4 in flight (fewer, larger batches: fewer shard RPCs per query)."""

    cache: str = "auto"
    """Result cache: auto (Redis if redis_url is set, else an in-process LRU), redis, local or off."""
    redis_url: str = ""
    """e.g. redis://redis:6379/0; shared by every coordinator replica."""
    cache_ttl_s: float = 300.0
    """Lifetime of a cached answer (answers are never stale; the TTL just bounds memory)."""
    cache_timeout_s: float = 0.1
    """Redis round-trip limit; past it the search goes on without the cache."""
    cache_retry_s: float = 1.0
    """After a Redis error the cache stays off this long before Redis is tried again."""
    cache_max_bytes: int = 256 * 1024 * 1024
    """Size of the in-process LRU."""

    def batching_config(self) -> BatchingConfig:
        return from_settings(self)

    def shard_addresses(self) -> list[tuple[str, str]]:
        """(name, address) per shard, in ring order."""
        if self.shards and self.shard_pattern:
            raise ValueError("set either shards or shard_pattern, not both")
        if self.shard_pattern:
            if self.shard_count <= 0:
                raise ValueError("shard_pattern needs shard_count > 0")
            return [(f"shard-{i}", self.shard_pattern.format(i=i)) for i in range(self.shard_count)]
        if not self.shards:
            raise ValueError("no shards configured: set shards or shard_pattern + shard_count")
        pairs = []
        for i, entry in enumerate(self.shards):
            name, _, address = entry.rpartition("=")
            pairs.append((name or f"shard-{i}", address))
        return pairs

    @classmethod
    def from_env(cls, **overrides: object) -> "CoordinatorConfig":
        return from_env(cls, ENV_PREFIX, **overrides)
