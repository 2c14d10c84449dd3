"""Coordinator configuration: defaults < SHARDSEARCH_COORDINATOR_* environment < command-line flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shardsearch import batching, security
from shardsearch.batching import BatchingConfig, from_settings
from shardsearch.config import ConfigError, ServerSettings, from_env

ENV_PREFIX = "SHARDSEARCH_COORDINATOR_"

# max_in_flight 1 lets batches grow with load: measured on 2 cores, 64 concurrent unary searches ran at ~2.5x the rate
# of 4 in flight (fewer, larger batches: fewer shard RPCs per query).
BATCHING = BatchingConfig(
    max_batch_size=256, max_queue_delay_us=500, max_queue_size=4096, max_in_flight=1, max_queue_time_ms=250.0
)


@dataclass(frozen=True)
class CoordinatorConfig(
    ServerSettings, batching.settings("RPC per shard", BATCHING),  # type: ignore[misc]
    security.client_settings("shard_", "the shards"),  # type: ignore[misc]
):
    host: str = "127.0.0.1"
    """Interface to bind gRPC on (0.0.0.0 in containers)."""
    port: int = 50051
    """gRPC port; 0 picks a free one (see port_file)."""
    metrics_port: int = 9100
    """Prometheus /metrics port; 0 picks a free one, -1 turns it off."""
    shards: tuple[str, ...] = ()
    """Shards in ring order, `host:port` or `name=host:port` (names default to shard-0, shard-1, ...); a shard with
    replicas lists them with `|`: `shard-0=10.0.0.1:50061|10.0.0.2:50061`."""
    shard_pattern: str = ""
    """Alternative to `shards`: an address pattern with {i} (shard), {r} (replica) or {n} (i * replicas + r, the
    StatefulSet ordinal), e.g. shard-{n}.shard.default.svc.cluster.local:50061."""
    shard_count: int = 0
    """How many shards `shard_pattern` expands to."""
    replicas: int = 1
    """Replicas per shard that `shard_pattern` expands to."""
    write_quorum: int = 1
    """Replicas of a shard that must have a write (fsynced) before it is acknowledged; 0 = every replica. Replicas
    that miss a write are fenced off from reads and catch up from their peers."""
    hedge_delay_ms: float = 0.0
    """Send a search to a second replica when the first has not answered after this long; 0 = off."""
    search_streams: bool = True
    """Send searches to each shard replica over one long-lived stream (about half the gRPC cost per search of a
    unary call); off: one unary call per search."""
    refine_share: bool = False
    """Deprecated, no effect (a warning at start): each shard now fits its re-ranking depth to its data and to the
    number of shards a search reaches (shard_server/refine_fit.py), which is what sharing a fixed depth guessed at."""
    vnodes: int = 1024
    """Virtual nodes per shard on the consistent-hash ring."""
    topology_poll_s: float = 2.0
    """How often the ring layout is re-read from the shards. The first coordinator stores the ring of its `shards`
    (or `shard_pattern`) on the shards; from then on the stored layout decides which shard names own which ids (it
    changes with `shardsearch admin`), and the flags only give the addresses of the shards they name."""
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
    search_latency_target_ms: float = 250.0
    """Adaptive admission: the cap on searches in flight grows while they finish within this and shrinks when they
    do not; searches past the cap get RESOURCE_EXHAUSTED at once. 0 = no cap (only the queue limits)."""

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

    encoder_url: str = ""
    """Triton Inference Server gRPC address (host:port) for SearchByText/SearchByImage, Encode and text/image
    upserts; empty = no encoder (those calls get FAILED_PRECONDITION)."""
    text_model: str = ""
    """Triton model that embeds text, `name` or `name:version` (empty version = the server's latest)."""
    image_model: str = ""
    """Triton model that embeds images, `name` or `name:version`."""
    encoder_timeout_s: float = 10.0
    """Longest one infer call may take (the caller's deadline also applies)."""
    encoder_retries: int = 3
    """Retries of an infer call that failed with UNAVAILABLE, with exponential backoff."""
    encoder_wait_s: float = 30.0
    """At start-up, wait this long for the models to be ready. A model still not ready is logged as an error naming
    it; its calls answer UNAVAILABLE until it is connected in the background (or, with encoder_required, the
    coordinator exits)."""
    encoder_required: bool = False
    """Exit at start-up, with an error naming the model, if a configured model is not ready within encoder_wait_s."""
    encoder_batch_max_size: int = 0
    """Texts or images per infer call; 0 = the model's max_batch_size."""
    encoder_batch_max_queue_delay_us: int = 2000
    """Longest an encode request waits for company while other infer calls run."""
    encoder_batch_max_in_flight: int = 4
    """Infer calls per model at once (Triton batches across them too)."""
    image_preprocess: str = "auto"
    """auto (client when the model takes a float tensor, server when it takes encoded bytes), client or server."""
    image_mean: str = "0.48145466,0.4578275,0.40821073"
    """Per-channel RGB mean for client-side preprocessing (CLIP's by default)."""
    image_std: str = "0.26862954,0.26130258,0.27577711"
    """Per-channel RGB standard deviation for client-side preprocessing (CLIP's by default)."""
    max_text_bytes: int = 8192
    """Longest text accepted, in UTF-8 bytes."""
    max_image_bytes: int = 16 * 1024 * 1024
    """Largest encoded image accepted."""
    min_image_side: int = 16
    """Smallest width or height accepted, in pixels."""
    max_image_pixels: int = 50_000_000
    """Largest decoded image accepted (width x height), a guard against decompression bombs."""
    embedding_cache: str = "auto"
    """Embedding cache: auto (Redis if redis_url is set, else an in-process LRU), redis, local or off."""
    embedding_cache_ttl_s: float = 7 * 24 * 3600.0
    """Lifetime of a cached embedding (embeddings of one model version never change)."""
    embedding_cache_max_bytes: int = 128 * 1024 * 1024
    """Size of the in-process embedding LRU."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    def batching_config(self) -> BatchingConfig:
        return from_settings(self)

    def validate(self) -> None:
        """Every check that needs no file or network: a bad value stops the start with ConfigError."""
        super().validate()
        self.shard_addresses()
        for name in ("cache", "embedding_cache"):
            if getattr(self, name) not in ("auto", "redis", "local", "off"):
                raise ConfigError(f"{self.setting(name)}: {getattr(self, name)!r} is not auto, redis, local or off")
            if getattr(self, name) == "redis" and not self.redis_url:
                raise ConfigError(f"{self.setting(name)}=redis needs {self.setting('redis_url')}")
        if self.image_preprocess not in ("auto", "client", "server"):
            raise ConfigError(f"{self.setting('image_preprocess')}: {self.image_preprocess!r} is not auto, client or "
                              "server")

    def shard_addresses(self) -> list[tuple[str, list[str]]]:
        """(name, replica addresses) per shard, in ring order."""
        if self.shards and self.shard_pattern:
            raise ConfigError(f"set either {self.setting('shards')} or {self.setting('shard_pattern')}, not both")
        if self.replicas < 1:
            raise ConfigError(f"{self.setting('replicas')} must be at least 1")
        if self.shard_pattern:
            if self.shard_count <= 0:
                raise ConfigError(f"{self.setting('shard_pattern')} needs {self.setting('shard_count')} > 0")
            if self.replicas > 1 and "{r}" not in self.shard_pattern and "{n}" not in self.shard_pattern:
                raise ConfigError(f"with {self.setting('replicas')} > 1, {self.setting('shard_pattern')} needs {{r}} "
                                  "or {n}")
            return [
                (f"shard-{i}", [self.shard_pattern.format(i=i, r=r, n=i * self.replicas + r)
                                for r in range(self.replicas)])
                for i in range(self.shard_count)
            ]
        if not self.shards:
            raise ConfigError(f"no shards configured: set {self.setting('shards')}, or {self.setting('shard_pattern')} "
                              f"with {self.setting('shard_count')}")
        pairs = []
        for i, entry in enumerate(self.shards):
            name, _, addresses = entry.rpartition("=")
            replicas = [a.strip() for a in addresses.split("|") if a.strip()]
            if not replicas:
                raise ConfigError(f"{self.setting('shards')}: shard entry {entry!r} has no address")
            pairs.append((name or f"shard-{i}", replicas))
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.setting('shards')}: duplicate shard names in {list(self.shards)}")
        return pairs

    @classmethod
    def from_env(cls, **overrides: object) -> "CoordinatorConfig":
        return from_env(cls, ENV_PREFIX, **overrides)
