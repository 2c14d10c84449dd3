"""Coordinator configuration: defaults < SHARDSEARCH_COORDINATOR_* environment < command-line flags."""

from __future__ import annotations

from dataclasses import dataclass

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
    log_level: str = "INFO"

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
