"""The `shardsearch` command: `local` (a whole cluster on this machine), `coordinator`, `shard`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence


def _local(args: argparse.Namespace) -> None:
    from shardsearch.local import LocalCluster

    cluster = LocalCluster(
        shards=args.shards, port=args.port, host=args.host, run_dir=Path(args.data_dir) if args.data_dir else None,
        omp_threads=args.omp_threads, metrics=args.metrics,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"starting {args.shards} shards and a coordinator...", flush=True)
    cluster.start()
    try:
        print(f"coordinator  {cluster.address}" + (f"  (metrics :{cluster.coordinator.metrics_port})" if args.metrics else ""))
        for proc in cluster.shard_procs:
            print(f"{proc.name:<12} {proc.address}" + (f"  (metrics :{proc.metrics_port})" if args.metrics else ""))
        print(f"logs in {cluster.run_dir}", flush=True)
        if args.demo:
            from shardsearch import demo

            demo.run(cluster.address)
            print(f"\ntry: grpcurl -plaintext -d '{{\"name\": \"demo\"}}' {cluster.address} "
                  "shardsearch.v1.SearchService/DescribeCollection")
        print("ready; Ctrl-C stops the cluster", flush=True)
        stop.wait()
    finally:
        print("stopping...", flush=True)
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shardsearch", description="A gRPC sharded vector-search cluster.")
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="run a coordinator and N shards on this machine")
    local.add_argument("--shards", type=int, default=2, help="number of shard processes (default 2)")
    local.add_argument("--port", type=int, default=50051, help="coordinator gRPC port (default 50051; 0 = free port)")
    local.add_argument("--host", default="127.0.0.1", help="coordinator interface (default 127.0.0.1)")
    local.add_argument("--data-dir", help="directory for the processes' logs and port files (default: a temp dir)")
    local.add_argument("--omp-threads", type=int, default=1, help="FAISS threads per shard (default 1: shards share cores)")
    local.add_argument("--metrics", action="store_true", help="serve Prometheus metrics on free ports")
    local.add_argument("--demo", action="store_true", help="load a demo collection and run an example query")
    local.set_defaults(run=_local)

    from coordinator import __main__ as coordinator_main
    from shard_server import __main__ as shard_main

    coordinator = commands.add_parser("coordinator", help="run the coordinator (public SearchService)")
    coordinator_main.add_arguments(coordinator)
    coordinator.set_defaults(run=coordinator_main.run)
    shard = commands.add_parser("shard", help="run one shard server")
    shard_main.add_arguments(shard)
    shard.set_defaults(run=shard_main.run)

    args = parser.parse_args(argv)
    run = args.run
    if run in (coordinator_main.run, shard_main.run):
        del args.command, args.run
    run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
