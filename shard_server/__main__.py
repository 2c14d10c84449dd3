"""`python -m shard_server` / `shardsearch shard`: run one shard server."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Sequence

from shard_server.config import ShardConfig
from shardsearch import batching, config as settings, security
from shardsearch.process import die_with_parent_if_asked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, help="gRPC port (0 = any free port)")
    parser.add_argument("--name", help="shard name, e.g. shard-0")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (0 = any free port, -1 = off)")
    parser.add_argument("--port-file", help="write the bound ports here as JSON once serving")
    parser.add_argument("--omp-threads", type=int, help="FAISS OpenMP threads (0 = FAISS default)")
    parser.add_argument("--search-threads", type=int, help="executor threads for FAISS work")
    parser.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False, help="stay on the CPU")
    parser.add_argument("--data-dir", help="directory for the write-ahead log and snapshots (default: memory only)")
    parser.add_argument("--snapshot-wal-bytes", type=int, help="snapshot once the log has grown this much (256 MiB)")
    parser.add_argument(
        "--peers", type=lambda s: tuple(p.strip() for p in s.split(",") if p.strip()),
        help="comma-separated addresses of this shard's other replicas (catch up from them before serving reads)",
    )
    parser.add_argument("--catch-up-wait-s", type=float, help="give up on unreachable peers after this long (30)")
    parser.add_argument(
        "--peer-pattern", help="in a StatefulSet, instead of --peers and --name: the coordinator's --shard-pattern, "
        "e.g. shard-{n}.shard:50061; name and peers follow from it, --replicas and the pod ordinal",
    )
    parser.add_argument("--replicas", type=int, help="replicas per shard, with --peer-pattern (default 1)")
    parser.add_argument("--shard-count", type=int, help="shards in the cluster, with --peer-pattern (checks ordinals)")
    parser.add_argument("--ordinal", type=int, help="StatefulSet ordinal, with --peer-pattern (default: host name's)")
    settings.add_server_arguments(parser)
    batching.add_arguments(parser, "FAISS call", ShardConfig().batching_config())
    security.add_server_arguments(parser, " (mutual TLS: the coordinator's)")
    security.add_client_arguments(parser, "peer-", "the peers (other replicas of this shard)")


def run(args: argparse.Namespace) -> None:
    die_with_parent_if_asked()
    overrides = {k: v for k, v in vars(args).items() if k in ShardConfig.__dataclass_fields__}
    config = ShardConfig.from_env(**overrides).with_topology()  # fail fast on a bad peer pattern or ordinal
    config.setup_logging()
    if config.omp_threads > 0:  # must precede the first FAISS import: OpenMP reads it once
        os.environ["OMP_NUM_THREADS"] = str(config.omp_threads)
    asyncio.run(serve_config(config))


async def serve_config(config: ShardConfig) -> None:
    from shard_server.server import serve  # imports FAISS only after OMP_NUM_THREADS is settled

    await serve(config)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shardsearch shard", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
