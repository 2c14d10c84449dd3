"""The search hot path in one run: a query's latency and the throughput a caller gets, next to the ceilings.

    .venv/bin/python benchmarks/latency.py --n 100000 --out docs/BENCHMARKS.md

On this machine, in ONE run and with ONE client harness (blocking grpcio stubs, as internal services call):
- the no-op `grpc.aio` SearchService (benchmarks/noop_server.py): the Python gRPC transport's ceiling;
- raw FAISS in this process: the same index type a shard builds, one query at a time and batched;
- a 1-shard and a 4-shard cluster (cache off: every search reaches the shards).
Data: a seeded embedding-like mixture (shardsearch.tools.datasets; 384-d, unit-normalised, inner product) with exact
ground truth. Every system is measured at the first nprobe of a sweep reaching recall@10 >= 0.95.

Measured: "seq" (one client calling unary Search one query at a time: p50/p99), "conc N" (N client threads, a
channel each, closed loop), BatchSearch (4 threads x 100 queries a call), StreamSearch (one stream, 64 queries in
flight) and h2load on unary Search (if `h2load` is installed: apt-get install nghttp2-client). Beside the seq run,
the servers' own histograms say where a query's time goes (the per-stage table). Ratios in the report are of figures
measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save  # noqa: E402
from throughput import cluster_nprobe, h2load, machine  # noqa: E402

from shardsearch import (
    codec,  # noqa: E402
    index_params,  # noqa: E402
)
from shardsearch.tools.datasets import embedding_like, exact_neighbours  # noqa: E402
from shardsearch.tools.local import LocalCluster  # noqa: E402
from shardsearch.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc  # noqa: E402

DIM = 384
COLLECTION = "bench"  # throughput.h2load searches this collection
TARGET = 0.95
NPROBES = (8, 16, 24, 32, 48, 64, 96, 128)
REFINES = (2, 3, 4, 6, 8, 12, 16, 20)  # the shards' own ladder (shard_server/refine_fit.py)
HEADING = "## Latency: one query, and the cluster next to the transport and FAISS"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(g[:10].tolist())) / 10 for f, g in zip(found, gt)]))


def percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


# ---- the client harness (the same for every server) ---------------------------------------------------------------

def unary_request(queries: np.ndarray, nprobe: int) -> Callable[[int], search_pb2.SearchRequest]:
    packed = [codec.pack(q) for q in queries]
    return lambda i: search_pb2.SearchRequest(
        collection=COLLECTION, vector_f32=packed[i % len(packed)], k=10, nprobe=nprobe, skip_cache=True)


def seq(address: str, request: Callable[[int], Any], n: int = 1000, warmup: int = 100) -> dict[str, Any]:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = search_pb2_grpc.SearchServiceStub(channel).Search
        for i in range(warmup):
            call(request(i), timeout=10)
        latencies = []
        started = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            call(request(i), timeout=10)
            latencies.append(time.perf_counter() - t)
        return {"qps": n / (time.perf_counter() - started), **percentiles(latencies)}


def conc(address: str, request: Callable[[int], Any], threads: int, seconds: float) -> dict[str, Any]:
    """`threads` client threads, a channel each, each calling unary Search in a closed loop."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    ready = threading.Barrier(threads + 1)

    def loop(t: int) -> None:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            call = search_pb2_grpc.SearchServiceStub(channel).Search
            call(request(t), timeout=10)
            ready.wait()
            i = t
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    call(request(i), timeout=10)
                except grpc.RpcError as exc:
                    errors.append(exc.code().name)
                    continue
                latencies[t].append(time.perf_counter() - started)
                i += threads

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join()
    flat = [x for per in latencies for x in per]
    return {"qps": len(flat) / elapsed, "seconds": elapsed, "errors": len(errors), **percentiles(flat)}


def batch(address: str, queries: np.ndarray, nprobe: int, seconds: float, threads: int = 4, rows: int = 100) -> dict:
    stop = threading.Event()
    done = [0] * threads

    def loop(t: int) -> None:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            call = search_pb2_grpc.SearchServiceStub(channel).BatchSearch
            lo = (t * rows) % len(queries)
            while not stop.is_set():
                chunk = queries[lo : lo + rows] if lo + rows <= len(queries) else queries[:rows]
                call(search_pb2.BatchSearchRequest(collection=COLLECTION, vectors_f32=codec.pack(chunk), k=10,
                                                   nprobe=nprobe, skip_cache=True), timeout=30)
                done[t] += len(chunk)
                lo = (lo + rows * threads) % len(queries)

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return {"qps": sum(done) / (time.perf_counter() - started), "threads": threads, "rows": rows}


def packed_request(queries: np.ndarray, nprobe: int, rows: int = 100) -> Callable[[int], search_pb2.SearchRequest]:
    """StreamSearch messages of `rows` queries each (SearchRequest.vectors_f32), as BatchSearch's calls."""
    def build(i: int) -> search_pb2.SearchRequest:
        lo = (i * rows) % (len(queries) - rows + 1)
        return search_pb2.SearchRequest(collection=COLLECTION, vectors_f32=codec.pack(queries[lo : lo + rows]), k=10,
                                        nprobe=nprobe, skip_cache=True)
    return build


def stream(address: str, request: Callable[[int], Any], seconds: float, window: int = 64) -> dict[str, Any]:
    """One StreamSearch with `window` messages in flight (a new one is sent as each answer arrives); counts queries
    (a packed message's rows each)."""
    slots: queue.Queue[None] = queue.Queue()
    for _ in range(window):
        slots.put(None)
    stop = threading.Event()

    def requests() -> Iterator[Any]:
        i = 0
        while not stop.is_set():
            slots.get()
            message = request(i)
            message.request_id = str(i)
            yield message
            i += 1

    answered = errors = 0
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        replies = search_pb2_grpc.SearchServiceStub(channel).StreamSearch(requests())
        started = time.perf_counter()
        for reply in replies:
            answered += len(reply.batch.results) if reply.HasField("batch") else 1
            errors += reply.error_code != 0
            slots.put(None)
            if time.perf_counter() - started > seconds:
                stop.set()
                slots.put(None)
                replies.cancel()
                break
        elapsed = time.perf_counter() - started
    return {"qps": answered / elapsed, "window": window, "errors": errors}


# ---- the servers ----------------------------------------------------------------------------------------------

class NoopServer:
    def __init__(self, forward: str | None = None) -> None:
        self._forward = ["--forward", forward] if forward else []

    def __enter__(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="noop-")
        port_file = Path(self._dir) / "port.json"
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("noop_server.py")), "--port-file", str(port_file),
             *self._forward])
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert time.monotonic() < deadline and self._proc.poll() is None, "the no-op server did not start"
            time.sleep(0.05)
        return f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def raw_faiss(base: np.ndarray, queries: np.ndarray, gt: np.ndarray, seconds: float) -> dict[str, Any]:
    """The index a shard holding all of `base` would build (its own parameter rule), in this process."""
    chosen = index_params.choose(DIM, len(base), search_pb2.IndexOptions())
    factory = chosen.factory() + ",RFlat"
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(len(base), min(len(base), max(chosen.nlist * 64, 16_384)), replace=False)
    index.train(base[np.sort(sample)])
    index.add(base)

    def params(nprobe: int, refine: int = chosen.refine_factor) -> Any:
        return faiss.IndexRefineSearchParameters(
            k_factor=refine, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))

    # The first nprobe reaching the target at the unfitted depth, then the shallowest depth that still reaches it
    # there: raw FAISS tuned by hand, as the shards tune their own depth (shard_server/refine_fit.py).
    sweep = {}
    for nprobe in NPROBES:
        sweep[nprobe] = recall(index.search(queries, 10, params=params(nprobe))[1], gt)
        if sweep[nprobe] >= TARGET:
            break
    refine, refines = chosen.refine_factor, {}
    for rf in REFINES:
        refines[rf] = recall(index.search(queries, 10, params=params(nprobe, rf))[1], gt)
        if refines[rf] >= TARGET:
            refine = rf
            break
    p = params(nprobe, refine)
    faiss.omp_set_num_threads(1)
    latencies = []
    for i in range(1100):
        t = time.perf_counter()
        index.search(queries[i % len(queries)][None], 10, params=p)
        if i >= 100:
            latencies.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        index.search(queries, 10, params=p)
        done += len(queries)
    return {"factory": factory, "nprobe": nprobe, "refine_factor": refine, "recall": refines.get(refine, sweep[nprobe]),
            "sweep": sweep, "refine_sweep": refines, "seq": percentiles(latencies), "batched_qps": done / (time.perf_counter() - started),
            "batched_threads": os.cpu_count()}


def load(address: str, base: np.ndarray) -> float:
    started = time.perf_counter()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name=COLLECTION, dim=DIM, metric=search_pb2.METRIC_INNER_PRODUCT), timeout=30)
        for lo in range(0, len(base), 5000):
            chunk = base[lo : lo + 5000]
            stub.Upsert(search_pb2.UpsertRequest(collection=COLLECTION, items=[
                search_pb2.Item(id=str(lo + i), vector_f32=codec.pack(v)) for i, v in enumerate(chunk)]), timeout=120)
        while not all(s.trained and not s.training for s in stub.DescribeCollection(
                search_pb2.DescribeCollectionRequest(name=COLLECTION), timeout=30).shards):
            time.sleep(0.5)
        settle(channel)
    return time.perf_counter() - started


def settle(channel: grpc.Channel) -> None:
    """Retrains every shard on all it holds and waits for it (and for the buffer and the maintenance after it): the
    first index was trained on the train_threshold vectors a shard held then, and when the background retrains of
    a growing shard happen depends on timing; so each run measures the index the data-size rule gives for the
    whole shard (at 1 shard: raw FAISS's own index), whatever the machine's speed during the load."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    search = search_pb2_grpc.SearchServiceStub(channel)
    admin.Retrain(admin_pb2.RetrainRequest(collection=COLLECTION, force=True), timeout=60)
    idle = admin_pb2.RetrainStatus.STATE_IDLE
    while True:
        time.sleep(2.0)  # a maintenance tick or two: absorbs and refits run between them
        status = admin.GetRetrainStatus(admin_pb2.GetRetrainStatusRequest(collection=COLLECTION), timeout=30)
        info = search.DescribeCollection(search_pb2.DescribeCollectionRequest(name=COLLECTION), timeout=30)
        if all(s.status.state == idle for s in status.shards) and not any(s.buffered_vectors for s in info.shards):
            return


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(\w+)(\{[^}]*\})? (\S+)$", text, re.M):
        if name.endswith(("_sum", "_count")) and 'method="Search"' in (labels or "method=\"Search\""):
            values[name] = values.get(name, 0.0) + float(value)
    return values


def stages(cluster: LocalCluster, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Runs `run` and returns its result with the mean time per query of each server-side stage meanwhile."""
    assert cluster.coordinator is not None
    ports = {"coordinator": cluster.coordinator.metrics_port, "shard": cluster.shard_procs[0].metrics_port}
    before = {k: scrape(p) for k, p in ports.items()}
    result = run()
    after = {k: scrape(p) for k, p in ports.items()}

    def mean(side: str, metric: str, per: str | None = None) -> float:
        total = after[side].get(metric + "_sum", 0) - before[side].get(metric + "_sum", 0)
        count = after[side].get((per or metric) + "_count", 0) - before[side].get((per or metric) + "_count", 0)
        return 1000 * total / count if count else float("nan")

    calls = "shardsearch_coordinator_request_duration_seconds"
    out = {
        "coordinator handler": mean("coordinator", calls),
        "coordinator -> shard RPC (one shard)": mean("coordinator", "shardsearch_coordinator_shard_request_duration_seconds"),
        "shard handler": mean("shard", "shardsearch_shard_request_duration_seconds"),
        "shard batch compute (FAISS and response)": mean("shard", "shardsearch_shard_batch_compute_duration_seconds"),
    }
    return result, out


def index_descriptions(address: str) -> list[str]:
    """Each shard's index as DescribeCollection says (its parameters and, when fitted, its re-ranking depths)."""
    with grpc.insecure_channel(address) as channel:
        info = search_pb2_grpc.SearchServiceStub(channel).DescribeCollection(
            search_pb2.DescribeCollectionRequest(name=COLLECTION), timeout=30)
    return [shard.index_description for shard in info.shards]


def measure_cluster(shards: int, base: np.ndarray, queries: np.ndarray, gt: np.ndarray, seconds: float,
                    h2load_seconds: float, coordinator_args: Sequence[str] = ()) -> dict[str, Any]:
    with LocalCluster(shards=shards, metrics=True, coordinator_args=["--cache", "off", *coordinator_args]) as cluster:
        address = cluster.address
        load_s = load(address, base)
        nprobe, sweep = cluster_nprobe(address, queries, gt, NPROBES, TARGET)
        print(f"  {shards} shard(s): loaded and trained in {load_s:.0f}s; nprobe {nprobe}: {sweep}", flush=True)
        request = unary_request(queries, nprobe)
        pids = {"coordinator": cluster.coordinator_procs[0].popen.pid}  # type: ignore[union-attr]
        pids.update({f"shard-{i}": p.popen.pid for i, p in enumerate(cluster.shard_procs)})  # type: ignore[union-attr]
        seq_result, stage = stages(cluster, lambda: seq(address, request))
        floor = None
        if shards == 1:  # the same shard behind a no-logic grpc.aio forwarder: the floor of a two-tier design
            forwarder = NoopServer(forward=cluster.shard_procs[0].address)
            with forwarder as floor_address:
                floor = {"seq": seq(floor_address, request),
                         "conc8": with_cpu({"forwarder": forwarder.pid, "shard-0": pids["shard-0"]},
                                           lambda: conc(floor_address, request, 8, seconds))}
        out = {
            "shards": shards, "nprobe": nprobe, "recall": sweep[nprobe], "sweep": sweep, "load_s": load_s,
            "index": index_descriptions(address),
            "seq": seq_result, "stages_ms": stage,
            "conc8": with_cpu(pids, lambda: conc(address, request, 8, seconds)),
            "conc64": conc(address, request, 64, seconds),
            "batch": batch(address, queries, nprobe, seconds), "stream": stream(address, request, seconds),
            "stream_packed": {**stream(address, packed_request(queries, nprobe), seconds, window=4), "rows": 100},
            "h2load": h2load(address, queries[0], nprobe, True, h2load_seconds) if h2load_seconds else None,
        }
        if floor:
            out["floor"] = floor
        print(f"  {json.dumps(out)}", flush=True)
        return out


def fmt_qps(qps: float | None) -> str:
    return f"{qps:,.0f} q/s" if qps else "n/a"


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(pids: dict[str, int], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs a closed-loop measurement and adds each process's CPU per answered query (ms), the client's too."""
    before, client = {name: cpu_seconds(pid) for name, pid in pids.items()}, os.times()
    result = run()
    after, client_after = {name: cpu_seconds(pid) for name, pid in pids.items()}, os.times()
    answered = result["qps"] * result.get("seconds", 0) or 1
    spent = {name: after[name] - before[name] for name in pids}
    spent["client"] = client_after.user + client_after.system - client.user - client.system
    result["cpu_ms_per_query"] = {name: round(1000 * s / answered, 3) for name, s in spent.items()}
    return result


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(results: dict[str, Any], command: str) -> str:
    noop, raw, m = results["noop"], results["raw"], results["machine"]
    rows = [
        "| system | recall@10 | seq p50 | seq p99 | conc 8 | conc 64 | BatchSearch | StreamSearch | StreamSearch, "
        "100 a message | h2load unary |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| no-op grpc.aio SearchService (transport ceiling) | | {noop['seq']['p50_ms']:.2f} ms | "
        f"{noop['seq']['p99_ms']:.2f} ms | {noop['conc8']['qps']:,.0f} q/s | {noop['conc64']['qps']:,.0f} q/s | | | | "
        f"{fmt_qps((noop.get('h2load') or {}).get('qps'))} |",
        f"| raw FAISS in-process, `{raw['factory']}` nprobe {raw['nprobe']} (refine x{raw['refine_factor']}) | "
        f"{raw['recall']:.3f} | {raw['seq']['p50_ms']:.2f} ms | {raw['seq']['p99_ms']:.2f} ms | | | "
        f"{raw['batched_qps']:,.0f} q/s (batches of {results['queries']}, {raw['batched_threads']} threads) | | | |",
    ]
    for c in results["clusters"]:
        if "floor" in c:
            f = c["floor"]
            rows.append(f"| no-logic grpc.aio forwarder -> the 1-shard cluster's shard (two-hop floor) | | "
                        f"{f['seq']['p50_ms']:.2f} ms | {f['seq']['p99_ms']:.2f} ms | {f['conc8']['qps']:,.0f} q/s | | "
                        "| | | |")
    for c in results["clusters"]:
        h2 = (c.get("h2load") or {}).get("qps")
        rows.append(
            f"| shardsearch, {c['shards']} shard(s), nprobe {c['nprobe']} | {c['recall']:.3f} | "
            f"{c['seq']['p50_ms']:.2f} ms | {c['seq']['p99_ms']:.2f} ms | {c['conc8']['qps']:,.0f} q/s | "
            f"{c['conc64']['qps']:,.0f} q/s | {c['batch']['qps']:,.0f} q/s | {c['stream']['qps']:,.0f} q/s | "
            f"{fmt_qps((c.get('stream_packed') or {}).get('qps'))} | {fmt_qps(h2)} |")
    ratios = ["| cluster | conc(8) / ceiling | conc(64) / ceiling | seq p50 / ceiling's | BatchSearch / raw FAISS | "
              "h2load / ceiling's |", "|---|---:|---:|---:|---:|---:|"]
    for c in results["clusters"]:
        ratios.append(f"| {c['shards']} shard(s) | {ratio(c['conc8']['qps'], noop['conc8']['qps'])} | "
                      f"{ratio(c['conc64']['qps'], noop['conc64']['qps'])} | "
                      f"{ratio(c['seq']['p50_ms'], noop['seq']['p50_ms'])} | "
                      f"{ratio(c['batch']['qps'], raw['batched_qps'])} | "
                      f"{ratio((c.get('h2load') or {}).get('qps'), (noop.get('h2load') or {}).get('qps'))} |")
    stage_rows = ["| stage (mean per query, seq run) | " + " | ".join(f"{c['shards']} shard(s)" for c in results["clusters"])
                  + " |", "|---|" + "---:|" * len(results["clusters"])]
    for name in results["clusters"][0]["stages_ms"]:
        stage_rows.append(f"| {name} | " + " | ".join(f"{c['stages_ms'][name]:.2f} ms" for c in results["clusters"])
                          + " |")
    stage_rows.append("| client round trip (seq mean) | " + " | ".join(
        f"{1000 / c['seq']['qps']:.2f} ms" for c in results["clusters"]) + " |")
    cpu_rows = ["| system (conc 8) | CPU ms per query: server side | of which the coordinator | the shards | "
                "the client |", "|---|---:|---:|---:|---:|"]
    nc = noop["conc8"]["cpu_ms_per_query"]
    cpu_rows.append(f"| no-op server | {nc['server']:.2f} | | | {nc['client']:.2f} |")
    for c in results["clusters"]:
        if "floor" in c:
            fc = c["floor"]["conc8"]["cpu_ms_per_query"]
            cpu_rows.append(f"| two-hop floor (forwarder + shard) | {fc['forwarder'] + fc['shard-0']:.2f} | "
                            f"{fc['forwarder']:.2f} | {fc['shard-0']:.2f} | {fc['client']:.2f} |")
        cc = c["conc8"]["cpu_ms_per_query"]
        shards = sum(v for name, v in cc.items() if name.startswith("shard-"))
        cpu_rows.append(f"| {c['shards']} shard(s) | {cc['coordinator'] + shards:.2f} | {cc['coordinator']:.2f} | "
                        f"{shards:.2f} | {cc['client']:.2f} |")
    return "\n".join([
        HEADING, "",
        f"`{command}`: {results['n']:,} x {DIM} embedding-like vectors (`shardsearch.tools.datasets.embedding_like`, seed 5, "
        f"{results['data']['clusters']} components of intrinsic dimension {results['data']['intrinsic']}, "
        "unit-normalised, inner product), "
        f"{results['queries']} queries with exact ground truth; every system at the first nprobe reaching recall@10 "
        f">= {TARGET}. One machine: {m['cores']} cores ({m['cpu']}), FAISS {m['faiss']}, grpcio {m['grpcio']}; the "
        "client, the servers and FAISS share it. Cache off. seq: one client, one unary Search at a time; conc N: N "
        "client threads with a channel each, closed loop; BatchSearch: 4 threads x 100 queries a call; "
        "StreamSearch: one stream, 64 queries in flight; StreamSearch, 100 a message: one stream, 4 messages of 100 "
        "queries (SearchRequest.vectors_f32) in flight.", "",
        *rows, "", "Ratios (same run):", "", *ratios, "",
        "Each cluster's shards (DescribeCollection), retrained on all they hold before the run; raw FAISS at the "
        "shallowest refine reaching the target at its nprobe:", "",
        *(f"- {c['shards']} shard(s): " + "; ".join(f"`{d}`" for d in sorted(set(c.get("index", [])))) for c in
          results["clusters"]), "",
        "Where one query's time goes (the servers' own histograms over the seq run; shard: shard-0):", "",
        *stage_rows, "",
        f"CPU per answered query over the conc 8 run (2 cores: {m['cores'] * 1000} ms of CPU per second in all):", "",
        *cpu_rows, "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=50, help="embedding_like: mixture components")
    parser.add_argument("--intrinsic", type=int, default=32, help="embedding_like: each component's dimension")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--h2load-seconds", type=float, default=10.0, help="0 = skip h2load")
    parser.add_argument("--shards", default="1,4", help="cluster sizes to measure, comma-separated")
    parser.add_argument("--coordinator-arg", action="append", default=[],
                        help="passed to each cluster's coordinator (e.g. --coordinator-arg=--refine-share)")
    parser.add_argument("--out", type=Path, help="write the section into this report (docs/BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/latency.json"))
    args = parser.parse_args()

    data = embedding_like(args.n + args.queries, DIM, seed=5, clusters=args.clusters, intrinsic=args.intrinsic)
    base, queries = data[: args.n], data[args.n :]
    gt = exact_neighbours(base, queries, 10, metric="ip")
    print(f"data: {args.n} x {DIM}, {args.queries} queries with exact top-10", flush=True)
    results: dict[str, Any] = {"n": args.n, "queries": args.queries, "machine": machine(),
                               "data": {"clusters": args.clusters, "intrinsic": args.intrinsic}}
    noop_server = NoopServer()
    with noop_server as address:
        request = unary_request(queries, 0)
        noop_pid = {"server": noop_server.pid}
        results["noop"] = {"seq": seq(address, request),
                           "conc8": with_cpu(noop_pid, lambda: conc(address, request, 8, args.seconds)),
                           "conc64": conc(address, request, 64, args.seconds),
                           "h2load": h2load(address, queries[0], 0, True, args.h2load_seconds)
                           if args.h2load_seconds else None}
    print(f"  no-op: {json.dumps(results['noop'])}", flush=True)
    results["raw"] = raw_faiss(base, queries, gt, args.seconds)
    print(f"  raw FAISS: {json.dumps(results['raw'])}", flush=True)
    results["clusters"] = [
        measure_cluster(int(s), base, queries, gt, args.seconds, args.h2load_seconds, args.coordinator_arg) for s in args.shards.split(",")
    ]
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    save(results, args.json, HEADING, report(results, command), args.out)


if __name__ == "__main__":
    main()
