"""One benchmark run: its config, its result, and `run_bench`, which wires the workload, callers and loops."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from shardsearch import security
from shardsearch.client import AsyncClient, Unavailable
from shardsearch.tools import demo
from shardsearch.tools.bench import workload
from shardsearch.tools.bench.callers import Caller, StreamCaller, UnaryCaller
from shardsearch.tools.bench.recorder import Recorder, report_progress
from shardsearch.tools.bench.schedule import Plan, closed_loop, open_loop
from shardsearch.tools.bench.workload import Request, Workload
from shardsearch.v1 import search_pb2, search_pb2_grpc

logger = logging.getLogger(__name__)

MODES = ("closed", "open")
CALLS = ("unary", "batch", "stream", "stream-batch")
BATCHED = ("batch", "stream-batch")  # calls carrying batch_size queries
POLICIES = {"fail": search_pb2.PARTIAL_POLICY_FAIL, "allow": search_pb2.PARTIAL_POLICY_ALLOW}
TRAIN_WAIT_S = 600.0
CONNECT_TIMEOUT_S = 10.0
RANDOM_QUERIES = 1000
# Its own connection per channel (not one shared subchannel), so --channels spreads load over TCP connections.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class BenchConfig(security.ClientSecurity):
    """Everything one run needs; each field is a `shardsearch bench` flag of the same name. Checked on creation."""

    address: str = "127.0.0.1:50051"
    collection: str = ""
    mode: str = "closed"
    """closed: `concurrency` requests in flight, each sent when one answers; open: arrivals at `rate` queries/s."""
    call: str = "unary"
    """unary (Search), batch (BatchSearch of `batch_size` queries) or stream (StreamSearch over `streams` streams)."""
    concurrency: int = 8
    rate: float = 0.0
    """Open loop: queries offered per second (a batch call carries `batch_size` of them)."""
    max_outstanding: int = 1000
    """Open loop: arrivals finding this many calls in flight are dropped (and counted), not sent."""
    batch_size: int = 32
    streams: int = 1
    channels: int = 1
    duration: float = 10.0
    """Seconds of measured load after the warm-up (ignored when `requests` is set)."""
    requests: int | None = None
    """Stop after this many measured queries instead (a batch run's last call is shorter if needed)."""
    warmup: float = 0.0
    """Seconds of load before measuring starts, excluded from every statistic."""
    k: int = 10
    nprobe: int = 0
    skip_cache: bool = False
    timeout: float | None = 10.0
    """Per-call deadline in seconds (per message, enforced by the client, for streams)."""
    partial_policy: str = "fail"
    queries: str | None = None
    """.npy (n x d) or .fvecs query vectors, cycled; without them or a dataset, random queries (no recall)."""
    ground_truth: str | None = None
    """.npy or .ivecs ids of each query's nearest neighbours (n x >= 10), for recall@10."""
    dataset: str | None = None
    """A folder with base.npy, queries.npy and gt_top100.npy (see shared/data); replaces queries/ground_truth."""
    id_format: str = "{}"
    """How a ground-truth integer becomes a collection id."""
    load: bool = False
    """With `dataset`: create the collection (L2) and upsert base.npy as ids str(i) before the run."""
    train_threshold: int = 0
    """With `load`: the new collection's train_threshold (0 = the server's default)."""
    wait_trained: bool = False
    """Wait until DescribeCollection shows every shard trained before the run."""
    progress: bool = False
    """Write a progress line to stderr about once a second."""

    def __post_init__(self) -> None:
        checks = {
            f"mode must be one of {MODES}": self.mode in MODES,
            f"call must be one of {CALLS}": self.call in CALLS,
            f"partial_policy must be one of {tuple(POLICIES)}": self.partial_policy in POLICIES,
            "collection is required": bool(self.collection),
            "open loop needs rate > 0": self.mode != "open" or self.rate > 0,
            "concurrency, max_outstanding, batch_size, streams, channels and k must be >= 1":
                min(self.concurrency, self.max_outstanding, self.batch_size, self.streams, self.channels, self.k) >= 1,
            "duration must be > 0 and warmup >= 0": self.duration > 0 and self.warmup >= 0,
            "requests must be >= 1": self.requests is None or self.requests >= 1,
            "give either dataset or queries/ground_truth": not (self.dataset and (self.queries or self.ground_truth)),
            "ground_truth needs queries": not self.ground_truth or bool(self.queries),
            "load needs dataset": not self.load or bool(self.dataset),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))
        self.id_format.format(0)  # fails now on a bad format, not after loading


@dataclass
class BenchResult:
    """What a run measured; `to_json()` is the --json document. Throughputs count answered queries/calls."""

    config: dict[str, Any]
    duration_s: float
    requests: int
    queries: int
    answered: int
    qps: float
    calls_per_s: float
    latency_s: dict[str, float | None]
    errors: dict[str, int]
    recall_at_10: float | None
    cached_fraction: float | None
    partial_fraction: float | None
    late: int
    dropped: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c = self.config
        shape = {"closed": f"concurrency {c['concurrency']}", "open": f"rate {c['rate']:g} q/s"}[c["mode"]]
        ms = "  ".join(f"{name} {v * 1000:.2f}" if v is not None else f"{name} -" for name, v in self.latency_s.items())
        lines = [
            f"{c['mode']} loop, {c['call']}, {shape}, {c['channels']} channel(s) -> {c['address']} {c['collection']!r}",
            f"  {self.queries} queries in {self.requests} calls over {self.duration_s:.2f}s, {self.answered} answered",
            f"  throughput  {self.qps:.1f} queries/s  ({self.calls_per_s:.1f} calls/s)",
            f"  latency ms  {ms}",
            f"  recall@10   {'-' if self.recall_at_10 is None else f'{self.recall_at_10:.4f}'}",
            f"  cached      {_percent(self.cached_fraction)}   partial {_percent(self.partial_fraction)}",
            f"  errors      {', '.join(f'{code} {n}' for code, n in self.errors.items()) or 'none'}",
        ]
        if c["mode"] == "open":
            lines.append(f"  open loop   late {self.late}, dropped {self.dropped}")
        return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


async def _prepare(config: BenchConfig, stub: search_pb2_grpc.SearchServiceStub) -> Workload:
    """Loads the dataset if asked, waits for training if asked, and reads (or makes up) the queries."""
    if config.load:
        assert config.dataset is not None
        base = workload.read_vectors(Path(config.dataset) / "base.npy")
        await workload.load(stub, config.collection, base, config.train_threshold)
    if config.wait_trained:
        await workload.wait_trained(stub, config.collection, TRAIN_WAIT_S)
    if config.dataset:
        return workload.read_dataset(config.dataset)
    if config.queries:
        return workload.read_workload(config.queries, config.ground_truth)
    info = await stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=config.collection))
    logger.info("no queries given: %d random %d-d queries, no recall", RANDOM_QUERIES, info.collection.dim)
    return Workload(demo.gaussian_mixture(RANDOM_QUERIES, info.collection.dim))


def _requests(config: BenchConfig, queries: np.ndarray) -> tuple[list[Request], Callable[[tuple[int, ...]], Request]]:
    """Every distinct request of the run, serialized once, and the builder for a shortened last batch."""
    shared = {"collection": config.collection, "k": config.k, "nprobe": config.nprobe,
              "partial_policy": POLICIES[config.partial_policy], "skip_cache": config.skip_cache}
    if config.call in BATCHED:
        make = workload.batch_request if config.call == "batch" else workload.stream_batch_request
        build = functools.partial(make, queries, **shared)
        return [build(rows) for rows in workload.batches(len(queries), config.batch_size)], build
    build = functools.partial(workload.search_request, queries, **shared)
    return [build((row,)) for row in range(len(queries))], build


def _truth_sets(truth: np.ndarray | None, id_format: str) -> list[frozenset[str]] | None:
    if truth is None:
        return None
    return [frozenset(id_format.format(int(i)) for i in row[:10]) for row in truth]


def _caller(config: BenchConfig, channels: Sequence[grpc.aio.Channel]) -> Caller:
    if config.call in ("stream", "stream-batch"):
        return StreamCaller(channels, config.streams, config.timeout)
    return UnaryCaller(channels, config.timeout, batch=config.call == "batch")


async def _drive(config: BenchConfig, caller: Caller, plan: Plan, recorder: Recorder) -> None:
    progress = None
    if config.progress:
        progress = asyncio.create_task(report_progress(recorder, plan.start, plan.measure_from, sys.stderr))
    try:
        if config.mode == "open":
            per_call = config.batch_size if config.call in BATCHED else 1
            await open_loop(plan, caller, recorder, per_call / config.rate, config.max_outstanding)
        else:
            await closed_loop(plan, caller, recorder, config.concurrency)
    finally:
        if progress is not None:
            progress.cancel()
            if sys.stderr.isatty():
                sys.stderr.write("\n")
        await caller.close()


async def run_bench(config: BenchConfig, data: Workload | None = None) -> BenchResult:
    """Runs one benchmark against `config.address`; `data`, if given, replaces the config's query files."""
    # Clients for their channels (TLS, token, limits); no gRPC retries: a benchmark counts what failed.
    clients = [AsyncClient(config.address, retries=False, options=_CHANNEL_OPTIONS, **config.client_kwargs())
               for _ in range(config.channels)]
    channels = [client.channel for client in clients]
    try:
        try:
            await asyncio.gather(*(client.wait_ready(CONNECT_TIMEOUT_S) for client in clients))
        except Unavailable:
            raise ConnectionError(f"could not connect to {config.address}") from None
        if data is None:
            data = await _prepare(config, search_pb2_grpc.SearchServiceStub(channels[0]))
        requests, build = _requests(config, data.queries)
        recorder = Recorder(_truth_sets(data.truth, config.id_format))
        plan = Plan(requests, build, config.warmup, config.duration, config.requests)
        await _drive(config, _caller(config, channels), plan, recorder)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    return _result(config, plan, recorder)


def _result(config: BenchConfig, plan: Plan, recorder: Recorder) -> BenchResult:
    duration = max(0.0, recorder.last_done - plan.measure_from) if recorder.requests else 0.0
    answered_calls = len(recorder.latencies)
    return BenchResult(
        config=asdict(config), duration_s=duration, requests=recorder.requests, queries=recorder.queries,
        answered=recorder.answered, qps=recorder.answered / duration if duration else 0.0,
        calls_per_s=answered_calls / duration if duration else 0.0, latency_s=recorder.latency_summary(),
        errors=dict(recorder.errors), recall_at_10=recorder.recall_at_10,
        cached_fraction=recorder.cached / recorder.answered if recorder.answered else None,
        partial_fraction=recorder.partial / recorder.answered if recorder.answered else None,
        late=recorder.late, dropped=recorder.dropped,
    )
