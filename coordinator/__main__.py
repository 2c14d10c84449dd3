"""`python -m coordinator` / `shardsearch coordinator`: run the public SearchService over a set of shards."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
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
    encoder = parser.add_argument_group("encoder (Triton) for text and image search")
    encoder.add_argument("--encoder-url", help="Triton gRPC address host:port (default none: text/image calls fail "
                         "with FAILED_PRECONDITION)")
    encoder.add_argument("--text-model", help="Triton model for texts, NAME or NAME:VERSION")
    encoder.add_argument("--image-model", help="Triton model for images, NAME or NAME:VERSION")
    encoder.add_argument("--encoder-timeout-s", type=float, help="longest infer call (default 10)")
    encoder.add_argument("--encoder-retries", type=int, help="retries after UNAVAILABLE, with backoff (default 3)")
    encoder.add_argument("--encoder-wait-s", type=float, help="wait this long for the models at start-up (default 30)")
    encoder.add_argument("--encoder-required", action="store_const", const=True,
                         help="exit if a model is not ready within --encoder-wait-s (default: serve, retry it)")
    encoder.add_argument("--encoder-batch-max-size", type=int, help="inputs per infer call (default: the model's max)")
    encoder.add_argument("--encoder-batch-max-queue-delay-us", type=int, help="wait for company (default 2000)")
    encoder.add_argument("--encoder-batch-max-in-flight", type=int, help="infer calls per model at once (default 4)")
    encoder.add_argument("--image-preprocess", choices=("auto", "client", "server"),
                         help="where images are resized and normalised (default auto: by the model's input type)")
    encoder.add_argument("--image-mean", help="RGB mean for client preprocessing, comma-separated (default CLIP's)")
    encoder.add_argument("--image-std", help="RGB std for client preprocessing, comma-separated (default CLIP's)")
    encoder.add_argument("--max-text-bytes", type=int, help="longest text accepted (default 8192)")
    encoder.add_argument("--max-image-bytes", type=int, help="largest encoded image accepted (default 16 MiB)")
    encoder.add_argument("--min-image-side", type=int, help="smallest image side accepted in pixels (default 16)")
    encoder.add_argument("--max-image-pixels", type=int, help="largest decoded image accepted (default 50M pixels)")
    encoder.add_argument("--embedding-cache", choices=("auto", "redis", "local", "off"),
                         help="embedding cache (default auto: Redis if --redis-url, else in-process)")
    encoder.add_argument("--embedding-cache-ttl-s", type=float, help="lifetime of a cached embedding (default 7 days)")
    encoder.add_argument("--embedding-cache-max-bytes", type=int, help="in-process embedding cache size (128 MiB)")


def run(args: argparse.Namespace) -> None:
    die_with_parent_if_asked()
    overrides = {k: v for k, v in vars(args).items() if k in CoordinatorConfig.__dataclass_fields__}
    config = CoordinatorConfig.from_env(**overrides)
    config.shard_addresses()  # fail fast on a bad shard list
    config.setup_logging()
    from coordinator.server import serve
    from encoder_client import EncoderNotReady
    from shardsearch.errors import FailedPrecondition

    try:
        asyncio.run(serve(config))
    except (EncoderNotReady, FailedPrecondition) as exc:  # the encoder is missing or unusable: say which and why
        logging.getLogger("coordinator").error("cannot start: %s", exc)
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shardsearch coordinator", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
