"""The `shardsearch` command: `local` (a whole cluster on this machine), `coordinator`, `shard`, `bench`, `eval`,
`ingest`, `export`, `import`, `admin`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from shardsearch import __version__


def _local(args: argparse.Namespace) -> None:
    from shardsearch.tools.local import CrashLoop, LocalCluster, RedisServer, RestartPolicy, TritonServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    triton = None
    if args.triton:
        print("starting Triton (scripts/triton_models.py)...", flush=True)
        triton = TritonServer().start()
    redis = RedisServer().start() if args.redis else None
    redis_url = redis.url if redis else args.redis_url
    coordinator_args = ["--redis-url", redis_url] if redis_url else []
    if triton:
        coordinator_args += triton.coordinator_args()
    if args.coordinators > 1 and not redis_url:
        print("several coordinators without Redis: result cache off (an in-process cache cannot see the others' writes)")
        coordinator_args = ["--cache", "off"]
    cluster = LocalCluster(
        shards=args.shards, port=args.port, host=args.host, run_dir=Path(args.data_dir) if args.data_dir else None,
        omp_threads=args.omp_threads, metrics=args.metrics, coordinators=args.coordinators,
        reuse_port=args.coordinators > 1, coordinator_args=coordinator_args, replicas=args.replicas,
    )
    print(f"starting {args.shards} shards and {args.coordinators} coordinator(s)...", flush=True)
    failed = False
    try:
        cluster.start()
    except BaseException:
        if redis:
            redis.stop()
        if triton:
            triton.stop()
        raise
    try:
        for proc in cluster.coordinator_procs:
            print(f"{proc.name:<12} {cluster.host}:{proc.port}" + (f"  (metrics :{proc.metrics_port})" if args.metrics else ""))
        if redis_url:
            print(f"{'redis':<12} {redis_url}")
        if triton:
            print(f"{'triton':<12} {triton.url}  (text: minilm_text, image: tiny_image; 384-d)")
        for proc in cluster.shard_procs:
            print(f"{proc.name:<12} {proc.address}" + (f"  (metrics :{proc.metrics_port})" if args.metrics else ""))
        print(f"logs in {cluster.run_dir}", flush=True)
        if args.demo:
            from shardsearch.tools import demo

            demo.run(cluster.address)
            print(f"\ntry: grpcurl -plaintext -d '{{\"name\": \"demo\"}}' {cluster.address} "
                  "shardsearch.v1.SearchService/DescribeCollection")
        print("ready; Ctrl-C stops the cluster", flush=True)
        try:
            cluster.supervise(stop, RestartPolicy(max_restarts=args.max_restarts),
                              say=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True))
        except CrashLoop as exc:
            print(f"shardsearch local: {exc}", file=sys.stderr, flush=True)
            failed = True
    finally:
        print("stopping...", flush=True)
        cluster.stop()
        if redis:
            redis.stop()
        if triton:
            triton.stop()
    if failed:
        sys.exit(1)


SERVER_PARTS = {"prometheus_client", "redis", "tritonclient", "PIL", "tqdm", "grpc_health", "grpc_reflection",
                "pythonjsonlogger", "packaging"}


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except ModuleNotFoundError as exc:  # a client-only install (`pip install shardsearch`) has none of these
        if (exc.name or "").split(".")[0] not in SERVER_PARTS:
            raise
        raise SystemExit(f"shardsearch: the command line needs {exc.name}, which the client-only install leaves out: "
                         "pip install 'shardsearch[server]' (or 'shardsearch[cpu]' to run shards too)") from None


def _main(argv: Sequence[str] | None) -> None:
    from shardsearch.tools.local import RestartPolicy

    parser = argparse.ArgumentParser(prog="shardsearch", description="A gRPC sharded vector-search cluster.")
    parser.add_argument("--version", action="version", version=f"shardsearch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="run a coordinator and N shards on this machine")
    local.add_argument("--shards", type=int, default=2, help="number of shard processes (default 2)")
    local.add_argument("--port", type=int, default=50051, help="coordinator gRPC port (default 50051; 0 = free port)")
    local.add_argument("--replicas", type=int, default=1, help="replica processes per shard (default 1)")
    local.add_argument("--host", default="127.0.0.1", help="coordinator interface (default 127.0.0.1)")
    local.add_argument("--data-dir", help="logs, port files and shard data, kept across runs "
                       "(default: a temp dir whose shard data is deleted on exit)")
    local.add_argument("--omp-threads", type=int, default=1, help="FAISS threads per shard (default 1: shards share cores)")
    local.add_argument("--metrics", action="store_true", help="serve Prometheus metrics on free ports")
    local.add_argument("--coordinators", type=int, default=1,
                       help="coordinator processes sharing the port with SO_REUSEPORT (default 1)")
    local.add_argument("--redis", action="store_true", help="start a local redis-server for the result cache")
    local.add_argument("--redis-url", help="use this Redis for the result cache (default: in-process LRU)")
    local.add_argument("--triton", action="store_true",
                       help="start a Triton server with the test encoders (needs scripts/setup_triton.sh) for "
                       "SearchByText/SearchByImage")
    local.add_argument("--demo", action="store_true", help="load a demo collection and run an example query")
    local.add_argument("--max-restarts", type=int, default=RestartPolicy.max_restarts,
                       help="a process that exits is restarted with backoff; after this many crashes in "
                       f"{RestartPolicy.window_s:.0f}s the launcher stops and exits 1 (default %(default)s)")
    local.set_defaults(run=_local)

    from shardsearch.coordinator import __main__ as coordinator_main
    from shardsearch.shard_server import __main__ as shard_main
    from shardsearch.tools import admin, evaluate, ingest, transfer
    from shardsearch.tools.bench import cli as bench_main

    for name, about, add_arguments, run_command in (
        ("coordinator", "run the coordinator (public SearchService)", coordinator_main.add_arguments,
         coordinator_main.run),
        ("shard", "run one shard server", shard_main.add_arguments, shard_main.run),
        ("bench", "load-test a coordinator: QPS, latency, errors and recall", bench_main.add_arguments,
         bench_main.run),
        ("eval", "offline quality: Recall, Precision, mAP, MRR of a query set", evaluate.add_arguments, evaluate.run),
        ("ingest", "bulk-load vectors, JSONL items or an image folder (resumable)", ingest.add_arguments, ingest.run),
        ("export", "write a collection (items, payloads, fields) to a file", transfer.add_export_arguments,
         transfer.run_export),
        ("import", "load a file written by `export` (any shard count)", transfer.add_import_arguments,
         transfer.run_import),
        ("admin", "operate a cluster: add or remove shards, retrain indexes", admin.add_arguments, admin.run),
    ):
        command = commands.add_parser(name, help=about)
        add_arguments(command)
        command.set_defaults(run=run_command)

    args = parser.parse_args(argv)
    run = args.run
    if run in (coordinator_main.run, shard_main.run):
        del args.command, args.run
    run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
