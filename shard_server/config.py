"""Shard server configuration: defaults < SHARDSEARCH_SHARD_* environment < command-line flags."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, replace
from typing import ClassVar

from shardsearch import batching, security
from shardsearch.batching import BatchingConfig, from_settings
from shardsearch.config import ConfigError, ServerSettings, from_env

ENV_PREFIX = "SHARDSEARCH_SHARD_"

# One FAISS search call at a time: FAISS spreads a call over omp_threads itself, and batches grow while it runs.
BATCHING = BatchingConfig(
    max_batch_size=1024, max_queue_delay_us=200, max_queue_size=8192, max_in_flight=1, max_queue_time_ms=250.0
)


@dataclass(frozen=True)
class ShardConfig(
    ServerSettings, batching.settings("FAISS call", BATCHING),  # type: ignore[misc]
    security.client_settings("peer_", "the peers (the other replicas of this shard, when catching up)"),  # type: ignore[misc]
):
    host: str = "127.0.0.1"
    """Interface to bind gRPC on (0.0.0.0 in containers)."""
    port: int = 50061
    """gRPC port; 0 picks a free one (see port_file)."""
    name: str = "shard-0"
    """Stable shard name, used in logs."""
    metrics_port: int = 9101
    """Prometheus /metrics port; 0 picks a free one, -1 turns it off."""
    port_file: str = ""
    """If set, the bound ports are written here as JSON once serving (for launchers)."""
    omp_threads: int = 0
    """OpenMP threads for FAISS; 0 keeps FAISS's default (all cores). Use 1 when processes share cores."""
    search_threads: int = 2
    """Worker threads running FAISS searches and writes off the event loop."""
    inline_search: bool = False
    """Run a batch of <= 4 unfiltered queries measured to cost <= 1 ms on the event loop while searches do not
    overlap (saves an executor hop, ~0.1 ms, at light load). Off by default: its overlap rule can still miss a
    burst, whose searches then run one by one instead of batching."""
    use_gpu: bool = True
    """Clone trained indexes to the GPU when faiss.get_num_gpus() > 0."""
    data_dir: str = ""
    """Where the write-ahead log and snapshots live; empty keeps everything in memory (lost on restart)."""
    snapshot_wal_bytes: int = 256 * 1024 * 1024
    """Snapshot a collection once its log has grown this much since the last snapshot (recovery replays less)."""
    delete_retention_s: float = 7 * 24 * 3600.0
    """How long delete markers are kept (they stop an older copy of a deleted item coming back from a peer). A
    replica whose data directory was last alive longer ago than this re-seeds every collection from its peers at
    start-up instead of rejoining with what it holds (its deleted items may have no marker left anywhere)."""
    max_delete_markers: int = 5_000_000
    """Delete markers one collection may hold on this shard (~150 bytes each; deletes of ids that never existed
    leave them too, and they are kept for delete_retention_s); a delete past it is RESOURCE_EXHAUSTED."""
    peers: tuple[str, ...] = ()
    """Addresses of the other replicas of this shard. With peers, the shard catches up from them at start-up (and
    when a coordinator asks) before it serves reads."""
    anti_entropy_s: float = 60.0
    """With peers: compare checksums with each peer this often and pull what differs (0 = off); repairs what a
    fence cannot (a coordinator that died before its Resync landed, a write cancelled mid-way)."""
    stall_repair_s: float = 2.0
    """With peers: a replica whose process was paused longer than this (SIGSTOP, a frozen VM) refuses reads until
    it has compared checksums with a peer and pulled what it missed (0 = off)."""
    catch_up_wait_s: float = 30.0
    """How long a catch-up keeps trying unreachable peers before serving reads from the local data alone."""
    peer_pattern: str = ""
    """In a StatefulSet, instead of `peers` and `name`: the replicas' address pattern, the coordinator's
    --shard-pattern ({i} shard, {r} replica, {n} = i * replicas + r, the pod ordinal). From it, `replicas` and this
    pod's ordinal the shard derives its name (shard-<i>) and its peers (the other replicas of shard i)."""
    replicas: int = 1
    """Replicas per shard, with peer_pattern (the coordinator's --replicas)."""
    shard_count: int = 0
    """Shards in the cluster, with peer_pattern (the coordinator's --shard-count): a pod whose ordinal is past
    shard_count * replicas refuses to start, since no coordinator would route to it. 0 = not checked."""
    ordinal: int = -1
    """This pod's StatefulSet ordinal, with peer_pattern; -1 = the number after the last '-' of the host name
    (a StatefulSet pod's host name is its pod name: shard-7 -> 7)."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    def batching_config(self) -> BatchingConfig:
        return from_settings(self)

    def validate(self) -> None:
        super().validate()
        for name in ("search_threads", "replicas"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.setting(name)} must be at least 1")
        if self.omp_threads < 0:
            raise ConfigError(f"{self.setting('omp_threads')} must be >= 0 (0 = FAISS's default)")
        self.with_topology()

    def with_topology(self, hostname: str | None = None) -> "ShardConfig":
        """This config with `name` and `peers` derived from `peer_pattern` (returned unchanged without one).

        Ordinal n is replica n % replicas of shard n // replicas, exactly as the coordinator expands its pattern, so
        both sides agree on which pods are one shard's replicas. `hostname` defaults to this machine's.
        """
        if not self.peer_pattern:
            return self
        if self.peers:
            raise ConfigError(f"set either {self.setting('peers')} or {self.setting('peer_pattern')}, not both")
        if self.replicas < 1:
            raise ConfigError(f"{self.setting('replicas')} must be at least 1")
        if self.replicas > 1 and "{r}" not in self.peer_pattern and "{n}" not in self.peer_pattern:
            raise ConfigError(f"with {self.setting('replicas')} > 1, {self.setting('peer_pattern')} needs {{r}} or {{n}}")
        n = self.ordinal if self.ordinal >= 0 else ordinal_of(socket.gethostname() if hostname is None else hostname)
        pods = self.shard_count * self.replicas
        if self.shard_count > 0 and n >= pods:
            raise ConfigError(
                f"pod ordinal {n} is past shard_count * replicas = {self.shard_count} * {self.replicas}: the "
                "StatefulSet has more pods than the topology the coordinator uses (no reads would reach this one)"
            )
        i, r = divmod(n, self.replicas)
        peers = tuple(
            self.peer_pattern.format(i=i, r=p, n=i * self.replicas + p) for p in range(self.replicas) if p != r
        )
        return replace(self, name=f"shard-{i}", peers=peers, peer_pattern="", ordinal=n)

    @classmethod
    def from_env(cls, **overrides: object) -> "ShardConfig":
        return from_env(cls, ENV_PREFIX, **overrides)


def ordinal_of(hostname: str) -> int:
    """The StatefulSet ordinal at the end of a pod's host name: `shard-7` -> 7."""
    match = re.fullmatch(r".*-(\d+)", hostname.split(".", 1)[0])
    if match is None:
        raise ConfigError(f"cannot read a StatefulSet ordinal from host name {hostname!r}: set --ordinal / "
                          f"{ENV_PREFIX}ORDINAL")
    return int(match.group(1))
