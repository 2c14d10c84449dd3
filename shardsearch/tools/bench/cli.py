"""`shardsearch bench`: the command over `run_bench`; flags map one-to-one onto BenchConfig fields."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Coroutine

import grpc

from shardsearch import security
from shardsearch.tools.bench.runner import CALLS, MODES, POLICIES, BenchConfig, BenchResult, run_bench
from shardsearch.tools.exits import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--address", help="coordinator host:port (default 127.0.0.1:50051)")
    arg("--collection", required=True, help="collection to search (and to create with --load)")
    arg("--mode", choices=MODES, help="closed: fixed concurrency (default); open: fixed arrival rate")
    arg("--call", choices=CALLS, help="unary: Search (default); batch: BatchSearch; stream: StreamSearch; "
        "stream-batch: StreamSearch messages of --batch-size queries each")
    arg("--concurrency", type=_steps(int), help="closed loop: requests (stream: messages) in flight (default 8); "
        "a list (1,8,64,256) runs one step per value")
    arg("--rate", type=_steps(float), help="open loop: queries per second to offer; a list runs one step per value")
    arg("--max-outstanding", type=int, help="open loop: calls in flight before arrivals are dropped (default 1000)")
    arg("--batch-size", type=int, help="queries per BatchSearch call (default 32)")
    arg("--streams", type=int, help="StreamSearch streams (default 1)")
    arg("--channels", type=int, help="gRPC channels (connections), used round-robin (default 1)")
    arg("--duration", type=float, help="seconds of measured load (default 10)")
    arg("--requests", type=int, help="stop after this many measured queries instead of after --duration")
    arg("--warmup", type=float, help="seconds of load before measuring (default 0)")
    arg("--k", type=int, help="neighbours per query (default 10)")
    arg("--nprobe", type=int, help="IVF lists probed per shard (default: the collection's)")
    arg("--skip-cache", action="store_true", help="bypass the coordinator's result cache")
    arg("--timeout", type=float, help="per-call deadline in seconds (default 10)")
    arg("--partial-policy", choices=tuple(POLICIES), help="when a shard fails: fail the call (default) or allow")
    arg("--queries", help=".npy (n x d) or .fvecs query vectors, cycled (default: random, no recall)")
    arg("--ground-truth", help=".npy or .ivecs true neighbour ids per query (n x >= 10) for recall@10")
    arg("--id-format", help="format of a ground-truth integer as a collection id (default '{}')")
    arg("--dataset", help="folder with base.npy, queries.npy, gt_top100.npy (like shared/data/bigann10k)")
    arg("--load", action="store_true", help="with --dataset: create the collection (L2) and upsert base.npy first")
    arg("--train-threshold", type=int, help="with --load: the collection's train_threshold (default: server's)")
    arg("--wait-trained", action="store_true", help="wait until every shard has trained before the run")
    arg("--json", type=Path, help="write the result as JSON here (a list of results for a sweep)")
    arg("--csv", type=Path, help="write one row per step (concurrency or rate) as CSV here")
    arg("--write-ghz-data", type=Path, metavar="FILE", help="write the Search requests (from --queries or "
        "--dataset) as a JSON array ghz replays with -D FILE, print the ghz command, and exit without a run")
    gates = parser.add_argument_group("gates (a pipeline's pass/fail: exit 3 naming every gate that failed)")
    gates.add_argument("--max-p99-ms", type=float, help="fail if the p99 latency (ms) is above this")
    gates.add_argument("--min-qps", type=float, help="fail if fewer queries/s were answered")
    gates.add_argument("--max-error-rate", type=float, help="fail if more than this fraction of calls failed (0..1)")
    gates.add_argument("--min-recall", type=float, help="fail if recall@10 is below this (needs ground truth)")
    arg("--quiet", action="store_true", help="no progress line")
    security.ClientSecurity.add_arguments(parser)


def _steps(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(part) for part in text.split(",") if part.strip()]
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def config_from_args(args: argparse.Namespace, step: dict[str, Any] | None = None) -> BenchConfig:
    names = {f.name for f in fields(BenchConfig)}
    given = {name: value for name, value in vars(args).items() if name in names and value is not None}
    for name in ("concurrency", "rate"):  # lists of steps: the first one unless `step` says
        if isinstance(given.get(name), list):
            given[name] = given[name][0]
    return BenchConfig(**{**given, **(step or {})}, progress=not args.quiet)


def sweep_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One step per value of the swept flag (--concurrency in a closed loop, --rate in an open one)."""
    name = "rate" if args.mode == "open" else "concurrency"
    values = getattr(args, name) or [None]
    return [{name: value} if value is not None else {} for value in values]


CSV_COLUMNS = ("step", "qps", "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "mean_ms",
               "recall_at_10", "error_rate", "answered", "queries")


def csv_row(result: BenchResult, step: Any) -> list[Any]:
    ms = [None if result.latency_s.get(n) is None else round(result.latency_s[n] * 1000, 3)  # type: ignore[operator]
          for n in ("p50", "p90", "p99", "p99.9", "max", "mean")]
    errors = sum(result.errors.values())
    return [step, round(result.qps, 1), round(result.calls_per_s, 1), *ms, result.recall_at_10,
            round(errors / result.requests, 6) if result.requests else None, result.answered, result.queries]


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (less client overhead per call), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run_async(coro: Coroutine[Any, Any, BenchResult]) -> BenchResult:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(coro)


def run(args: argparse.Namespace) -> None:
    """The command: exit 2 when the run could not start, 1 when not one query was answered."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.write_ghz_data:
        write_ghz_data(args)
        return
    steps = sweep_steps(args)
    results: list[tuple[Any, BenchResult]] = []
    for number, step in enumerate(steps):
        config = config_from_args(args, step)
        if number:  # the collection is loaded (and trained) once, by the first step
            config = dataclasses.replace(config, load=False, wait_trained=False)
        try:
            result = _run_async(run_bench(config))
        except grpc.aio.AioRpcError as exc:
            fail("bench", f"{exc.code().name}: {exc.details()}")
        except (ValueError, OSError, TimeoutError) as exc:
            fail("bench", str(exc))
        print(result.summary(), flush=True)
        results.append((next(iter(step.values()), None), result))
    if len(results) > 1:
        print("step " + "  ".join(CSV_COLUMNS[1:8]))
        for step_value, result in results:
            print("  ".join(str(v) for v in csv_row(result, step_value)[:8]))
    if args.json:
        documents = [result.to_json() for _, result in results]
        args.json.write_text(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2) + "\n")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_row(result, step_value) for step_value, result in results)
    if not any(result.answered for _, result in results):
        sys.exit(1)
    failed = [f"{'' if len(results) == 1 else f'step {step_value}: '}{message}"
              for step_value, result in results for message in failed_gates(result, args)]
    for message in failed:
        print(f"shardsearch bench: gate failed: {message}", file=sys.stderr)
    if failed:
        sys.exit(3)


def write_ghz_data(args: argparse.Namespace) -> None:
    """ghz (https://ghz.sh) replays a JSON array of messages, one per call in turn: the same Search requests this
    command sends (vectors as base64 float32 bytes, the proto3 JSON mapping)."""
    from google.protobuf import json_format

    from shardsearch.tools.bench import workload
    from shardsearch.v1 import search_pb2

    if args.dataset:
        queries = workload.read_dataset(args.dataset).queries
    elif args.queries:
        queries = workload.read_vectors(args.queries)
    else:
        fail("bench", "--write-ghz-data needs --queries or --dataset")
    messages = [json_format.MessageToDict(search_pb2.SearchRequest(
        collection=args.collection, vector_f32=row.astype("<f4").tobytes(), k=args.k or 10, nprobe=args.nprobe or 0,
        skip_cache=args.skip_cache), preserving_proto_field_name=True) for row in queries]
    args.write_ghz_data.write_text(json.dumps(messages) + "\n")
    address = args.address or "127.0.0.1:50051"
    print(f"wrote {len(messages)} Search requests to {args.write_ghz_data}; replay them with:\n"
          f"  ghz --insecure --proto proto/shardsearch/v1/search.proto --import-paths proto "
          f"--call shardsearch.v1.SearchService/Search -D {args.write_ghz_data} -c 8 -n 100000 {address}")


def failed_gates(result: BenchResult, args: argparse.Namespace) -> list[str]:
    """Each gate that the result misses, said with the measured value and the bound."""
    failed = []
    p99 = result.latency_s.get("p99")
    if args.max_p99_ms is not None and (p99 is None or p99 * 1000 > args.max_p99_ms):
        failed.append(f"p99 latency {'-' if p99 is None else f'{p99 * 1000:.2f}'} ms > --max-p99-ms {args.max_p99_ms:g}")
    if args.min_qps is not None and result.qps < args.min_qps:
        failed.append(f"throughput {result.qps:.1f} queries/s < --min-qps {args.min_qps:g}")
    calls = result.requests
    error_rate = sum(result.errors.values()) / calls if calls else 1.0
    if args.max_error_rate is not None and error_rate > args.max_error_rate:
        failed.append(f"error rate {error_rate:.4f} ({sum(result.errors.values())} of {calls} calls) > "
                      f"--max-error-rate {args.max_error_rate:g}")
    if args.min_recall is not None and (result.recall_at_10 is None or result.recall_at_10 < args.min_recall):
        measured = "not measured (no ground truth)" if result.recall_at_10 is None else f"{result.recall_at_10:.4f}"
        failed.append(f"recall@10 {measured} < --min-recall {args.min_recall:g}")
    return failed

