"""`python -m coordinator` / `shardsearch coordinator`: run the public SearchService over a set of shards."""

from __future__ import annotations

import argparse
import asyncio
from typing import Sequence

from coordinator.config import CoordinatorConfig
from shardsearch import batching, config as settings, security
from shardsearch.process import die_with_parent_if_asked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default 9100; 0 = free port, -1 = off)")
    parser.add_argument(
        "--shards", type=lambda s: tuple(p.strip() for p in s.split(",") if p.strip()),
        help="comma-separated shards in ring order: host:port or name=host:port; replicas joined by |",
    )
    parser.add_argument(
        "--shard-pattern", help="address pattern with {i} shard, {r} replica, {n} ordinal, e.g. shard-{n}.shard:50061",
    )
    parser.add_argument("--shard-count", type=int, help="number of shards the pattern expands to")
    parser.add_argument("--replicas", type=int, help="replicas per shard the pattern expands to (default 1)")
    parser.add_argument("--write-quorum", type=int, help="replicas that must have a write to acknowledge it (1; 0 = all)")
    parser.add_argument("--hedge-delay-ms", type=float, help="also ask a second replica after this long (0 = off)")
    parser.add_argument("--vnodes", type=int, help="virtual nodes per shard on the ring")
    parser.add_argument("--default-timeout-s", type=float, help="deadline for calls that set none")
    parser.add_argument("--port-file", help="write the bound ports here as JSON once serving")
    parser.add_argument("--reuse-port", action="store_const", const=True, help="SO_REUSEPORT: several processes, one port")
    parser.add_argument("--search-latency-target-ms", type=float,
                        help="adaptive cap on searches in flight keeps them near this latency (250; 0 = off)")
    settings.add_server_arguments(parser)
    batching.add_arguments(parser, "RPC per shard", CoordinatorConfig().batching_config())
    security.add_server_arguments(parser, " (mutual TLS)")
    security.add_client_arguments(parser, "shard-", "the shards")
    cache = parser.add_argument_group("result cache")
    cache.add_argument("--cache", choices=("auto", "redis", "local", "off"), help="default auto: Redis if --redis-url")
    cache.add_argument("--redis-url", help="e.g. redis://127.0.0.1:6379/0 (shared by every coordinator)")
    cache.add_argument("--cache-ttl-s", type=float, help="lifetime of a cached answer (default 300)")
    cache.add_argument("--cache-timeout-s", type=float, help="Redis round-trip limit (default 0.1)")
    cache.add_argument("--cache-retry-s", type=float, help="how often Redis is retried after an error (default 1)")
    cache.add_argument("--cache-max-bytes", type=int, help="size of the in-process LRU (default 256 MiB)")


def run(args: argparse.Namespace) -> None:
    die_with_parent_if_asked()
    overrides = {k: v for k, v in vars(args).items() if k in CoordinatorConfig.__dataclass_fields__}
    config = CoordinatorConfig.from_env(**overrides)
    config.shard_addresses()  # fail fast on a bad shard list
    config.setup_logging()
    from coordinator.server import serve

    asyncio.run(serve(config))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shardsearch coordinator", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
