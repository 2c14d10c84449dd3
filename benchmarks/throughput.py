"""Throughput benchmark: raw FAISS (the ceiling) vs the cluster with 1 and 4 shards, in one run, written to a report.

    .venv/bin/python benchmarks/throughput.py --n 1000000 --out docs/BENCHMARKS.md

Data: a seeded Gaussian mixture shaped like embeddings (see `embedding_like`; unit-normalised, inner product),
n x 128, with exact top-10 ground truth computed here by brute force. Raw FAISS is one IVF-PQ fast-scan index + exact refine over all the data, parameters from the
shard's own rule, in this process with every core: what a user would run instead of the cluster. Each cluster
(shard processes, two coordinator processes sharing one port with SO_REUSEPORT, and a redis-server) runs on this
same machine, as does the load generator (`shardsearch.tools.bench`) and h2load: they all share the cores, which is
stated beside the figures. nprobe is the smallest of a sweep that reaches recall@10 >= 0.95 in each setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np

from shardsearch import codec, index_params
from shardsearch.tools.bench import BenchConfig, BenchResult, run_bench
from shardsearch.tools.datasets import embedding_like
from shardsearch.tools.local import LocalCluster, RedisServer
from shardsearch.v1 import search_pb2, search_pb2_grpc

DIM = 128
TARGET_RECALL = 0.95
NPROBES = (2, 4, 8, 16, 32, 64)
REFINES = (10, 20)  # exact re-ranking of k x this many candidates
COLLECTION = "bench"
ANALYSIS = """## What limits these figures (profiled with py-spy)

- **Two cores for everything.** Raw FAISS has both cores to itself. The cluster shares them between 4 (or 1) shard
  processes, 2 coordinators, redis-server and the load generator (or h2load), so every figure above is a share of
  the same two cores, not a per-process ceiling.
- **Shards** (py-spy --native, batch load): the exact re-ranking and the IVF fast-scan each take about half of the
  FAISS time; gRPC and building responses take the rest. Four shards each run the coarse quantizer, their own
  candidate list and its re-ranking for every query: more work per query than one index (and a higher recall,
  0.987 vs 0.965 at the same settings). One shard reaches 0.38x of raw FAISS through the whole cluster.
- **Coordinator:** about three quarters of its CPU is gRPC machinery (the completion-queue poller thread, completion
  callbacks, outgoing call setup), not shardsearch code. A unary call costs one server RPC; a batch costs one RPC per
  shard. That is why batching multiplies unary throughput (4.1x here), why one batch in flight at a time beats
  several (fewer, larger batches), and why more coordinator processes (SO_REUSEPORT) or replicas are the way past it.
- **Streaming** sends one query per message; each message costs both ends about what a unary call does, and the
  coordinator's batches stay small. BatchSearch carries many queries per message and goes 3x further.
- **Warm cache:** hits are looked up in batches (one Redis round trip for all concurrent lookups), so a unary hit
  costs the coordinator about as much as the unary RPC itself: the unary figure is bound by gRPC, not by Redis
  (batched hits: tens of thousands of queries/s). On one shard with a small FAISS cost a hit is no cheaper than a
  search; with four shards it is.
- **Latency at half of peak** includes queueing behind whole batches on shared cores; p99 falls with spare cores.
"""


# ---- data ---------------------------------------------------------------------------------------------------------

def make_data(n: int, nq: int, folder: Path) -> tuple[np.ndarray, Path, Path]:
    """base (n x 128), and .npy paths of the queries and their exact top-10 (cached in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    qpath, gpath = folder / f"queries-{n}.npy", folder / f"gt-{n}.npy"
    data = embedding_like(n + nq, DIM)
    base, queries = data[:n], data[n:]
    if not gpath.exists():
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        flat = faiss.IndexFlatIP(DIM)
        flat.add(base)
        _, gt = flat.search(queries, 10)
        np.save(qpath, queries)
        np.save(gpath, gt)
    return base, qpath, gpath


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(g[:10].tolist())) / 10 for f, g in zip(found, gt)]))


# ---- raw FAISS ----------------------------------------------------------------------------------------------------

def raw_faiss(base: np.ndarray, queries: np.ndarray, gt: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    chosen = index_params.choose(DIM, len(base), search_pb2.IndexOptions())
    factory = chosen.factory() + ",RFlat"
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    sample = np.random.default_rng(0).choice(len(base), min(len(base), max(chosen.nlist * 64, 16_384), 200_000),
                                             replace=False)
    index.train(base[np.sort(sample)])
    index.add(base)
    build_s = time.perf_counter() - started

    def params(nprobe: int, refine: int) -> faiss.IndexRefineSearchParameters:
        return faiss.IndexRefineSearchParameters(
            k_factor=refine, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))

    # The cheapest setting that reaches the target: the smaller refine factor first, then the smallest nprobe.
    sweep: dict[str, float] = {}
    nprobe, refine = NPROBES[-1], chosen.refine_factor
    for rf in REFINES:
        for probe in NPROBES:
            sweep[f"{probe}/{rf}"] = recall(index.search(queries, 10, params=params(probe, rf))[1], gt)
            if sweep[f"{probe}/{rf}"] >= TARGET_RECALL:
                break
        if sweep[f"{probe}/{rf}"] >= TARGET_RECALL:
            nprobe, refine = probe, rf
            break

    def rate(rows: int, threads: int) -> float:
        faiss.omp_set_num_threads(threads)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            lo = done % len(queries)
            chunk = queries[lo : lo + rows]
            index.search(chunk, 10, params=params(nprobe, refine))
            done += len(chunk)
        return done / (time.perf_counter() - start)

    cores = os.cpu_count() or 1
    return {
        "factory": factory, "nlist": chosen.nlist, "nprobe": nprobe, "refine_factor": refine,
        "recall_sweep": sweep, "recall": sweep[f"{nprobe}/{refine}"], "build_s": build_s,
        "batch_qps": rate(batch, cores), "single_qps_all_cores": rate(1, cores), "single_qps_1_thread": rate(1, 1),
    }


# ---- cluster ------------------------------------------------------------------------------------------------------

def load(
    address: str, base: np.ndarray, refine_factor: int = 0, batch: int = 5_000, train_threshold: int = 0
) -> float:
    """Creates the collection, upserts `base` (ids str(i)) and waits for every shard to train; returns seconds.

    A `train_threshold` above a shard's share of `base` keeps every shard on exact (flat) search."""
    started = time.perf_counter()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        stub.CreateCollection(search_pb2.CreateCollectionRequest(
            name=COLLECTION, dim=DIM, metric=search_pb2.METRIC_INNER_PRODUCT,
            index=search_pb2.IndexOptions(refine_factor=refine_factor, train_threshold=train_threshold)))
        futures = []
        for lo in range(0, len(base), batch):
            items = [search_pb2.Item(id=str(i), vector_f32=codec.pack(base[i]))
                     for i in range(lo, min(lo + batch, len(base)))]
            futures.append(stub.Upsert.future(search_pb2.UpsertRequest(collection=COLLECTION, items=items), timeout=120))
            if len(futures) >= 4:
                futures.pop(0).result()
        for future in futures:
            future.result()
        while True:
            info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=COLLECTION))
            if all((s.trained or s.vectors < s.index.train_threshold) and not s.training for s in info.shards):
                return time.perf_counter() - started
            time.sleep(1.0)


def cluster_nprobe(
    address: str, queries: np.ndarray, gt: np.ndarray, nprobes: tuple[int, ...] = NPROBES,
    target: float = TARGET_RECALL,
) -> tuple[int, dict[int, float]]:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        sweep = {}
        for nprobe in nprobes:
            reply = stub.BatchSearch(search_pb2.BatchSearchRequest(
                collection=COLLECTION, vectors_f32=codec.pack(queries), k=10, nprobe=nprobe, skip_cache=True),
                timeout=300)
            found = np.array([[int(h.id) for h in r.hits] + [-1] * (10 - len(r.hits)) for r in reply.results])
            sweep[nprobe] = recall(found, gt)
            if sweep[nprobe] >= target:
                return nprobe, sweep
    return nprobes[-1], sweep


@dataclass(frozen=True)
class Run:
    name: str
    config: dict[str, Any]


def h2load(address: str, query: np.ndarray, nprobe: int, skip_cache: bool, seconds: float) -> dict[str, Any] | None:
    """Unary Search driven by h2load (C, HTTP/2) with one serialized gRPC request: no Python client in the way."""
    if shutil.which("h2load") is None:
        return None
    message = search_pb2.SearchRequest(
        collection=COLLECTION, vector_f32=codec.pack(query), k=10, nprobe=nprobe, skip_cache=skip_cache,
    ).SerializeToString()
    with tempfile.NamedTemporaryFile(suffix=".grpc", delete=False) as fh:
        fh.write(struct.pack(">?I", False, len(message)) + message)  # gRPC frame: not compressed, length, message
    cmd = ["h2load", "-D", str(int(seconds)), "-c", "16", "-m", "16", "-t", "1", "-d", fh.name,
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://{address}/shardsearch.v1.SearchService/Search"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    os.unlink(fh.name)
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    return {"command": " ".join(cmd[:-1]) + " http://ADDRESS/shardsearch.v1.SearchService/Search",
            "qps": float(match.group(1)) if match else None, "http_2xx": int(status.group(1)) if status else None}


def measure_cluster(
    shards: int, coordinators: int, omp: int, base: np.ndarray, qpath: Path, gpath: Path, seconds: float,
    warmup: float, redis_url: str, refine_factor: int,
) -> dict[str, Any]:
    queries, gt = np.load(qpath), np.load(gpath)
    common = ["--redis-url", redis_url]
    with LocalCluster(shards=shards, omp_threads=omp, coordinators=coordinators, reuse_port=True,
                      coordinator_args=common, metrics=True) as cluster:
        address = cluster.address
        print(f"  loading {len(base)} vectors into {shards} shard(s)...", flush=True)
        load_s = load(address, base, refine_factor)
        nprobe, sweep = cluster_nprobe(address, queries, gt)
        print(f"  loaded and trained in {load_s:.0f}s; nprobe {nprobe} (sweep {sweep})", flush=True)

        async def bench(name: str, **overrides: Any) -> dict[str, Any]:
            settings: dict[str, Any] = {"duration": seconds, "warmup": warmup, "channels": 2, **overrides}
            config = BenchConfig(
                address=address, collection=COLLECTION, queries=str(qpath), ground_truth=str(gpath), k=10,
                nprobe=nprobe, **settings,
            )
            result: BenchResult = await run_bench(config)
            row = result.to_json()
            row["name"] = name
            print(f"  {name:<42} {result.qps:>9.0f} q/s  p50 {ms(result.latency_s.get('p50'))}  "
                  f"p99 {ms(result.latency_s.get('p99'))}  recall {result.recall_at_10}  "
                  f"cached {result.cached_fraction}  errors {result.errors}", flush=True)
            return row

        async def suite() -> list[dict[str, Any]]:
            rows = [
                await bench("batch 256 x 4 in flight, cache off", call="batch", batch_size=256, concurrency=4,
                            skip_cache=True),
                await bench("stream, 512 in flight over 4 streams, cache off", call="stream", streams=4,
                            concurrency=512, skip_cache=True),
                await bench("unary, 64 concurrent, batching on, cache off", concurrency=64, skip_cache=True),
            ]
            peak = rows[-1]["qps"]
            rows.append(await bench("unary, open loop at half that peak, cache off", mode="open",
                                    rate=max(1.0, peak / 2), skip_cache=True))
            rows.append(await bench("unary, 64 concurrent, cache warm", concurrency=64, warmup=max(warmup, 3.0)))
            rows.append(await bench("batch 256 x 4 in flight, cache warm", call="batch", batch_size=256,
                                    concurrency=4))
            return rows

        rows = asyncio.run(suite())
        external = {
            "cache off": h2load(address, queries[0], nprobe, True, seconds),
            "cache warm": h2load(address, queries[0], nprobe, False, seconds),
        }
        cluster.restart_coordinators([*common, "--no-batching"])

        async def unbatched() -> list[dict[str, Any]]:
            return [await bench("unary, 64 concurrent, batching OFF, cache off", concurrency=64, skip_cache=True)]

        rows += asyncio.run(unbatched())
        external["cache off, batching off"] = h2load(cluster.address, queries[0], nprobe, True, seconds)
        print(f"  h2load: {external}", flush=True)
    return {"shards": shards, "coordinators": coordinators, "omp_threads": omp, "load_s": load_s, "nprobe": nprobe,
            "recall_sweep": sweep, "runs": rows, "h2load": external}


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


# ---- report -------------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu": model, "gpus": faiss.get_num_gpus(), "python": platform.python_version(),
            "faiss": faiss.__version__, "grpcio": grpc.__version__, "os": platform.platform()}


def report(results: dict[str, Any], command: str) -> str:
    m, raw = results["machine"], results["raw"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured in one run of `{command}` on {results['date']}.",
        "",
        f"**Machine:** {m['cores']} cores ({m['cpu']}), GPU: {'none' if not m['gpus'] else m['gpus']}; "
        f"Python {m['python']}, FAISS {m['faiss']}, grpcio {m['grpcio']}. Everything ran on this one machine: "
        "shard processes, coordinators, redis-server, and the load generator or h2load, all sharing the cores.",
        "",
        f"**Data:** {results['n']:,} x {DIM} seeded Gaussian mixture, 1000 clusters each over a 16-d subspace "
        "(`embedding_like` in the script; unit-normalised, inner product), "
        f"{results['nq']:,} queries with exact top-10 ground truth. Recall is recall@10 against it.",
        "",
        "## Raw FAISS (the ceiling)",
        "",
        f"`{raw['factory']}`, nprobe {raw['nprobe']}, refine k x {raw['refine_factor']}: the cheapest setting reaching "
        f"recall@10 >= {TARGET_RECALL} (sweep, nprobe/refine: {fmt_sweep(raw['recall_sweep'])}); built in "
        f"{raw['build_s']:.0f} s. The clusters' collections use the same refine factor.",
        "",
        "| search | queries/s | recall@10 |",
        "|---|---:|---:|",
        f"| batches of {results['batch']}, {m['cores']} threads | {raw['batch_qps']:,.0f} | {raw['recall']:.3f} |",
        f"| one query per call, {m['cores']} threads | {raw['single_qps_all_cores']:,.0f} | |",
        f"| one query per call, 1 thread | {raw['single_qps_1_thread']:,.0f} | |",
        "",
    ]
    for cluster in results["clusters"]:
        lines += [
            f"## Cluster: {cluster['shards']} shard(s), {cluster['coordinators']} coordinator processes (SO_REUSEPORT), "
            f"Redis cache",
            "",
            f"Loaded and trained in {cluster['load_s']:.0f} s; nprobe per shard {cluster['nprobe']} "
            f"(sweep, nprobe: {fmt_sweep(cluster['recall_sweep'])}); {cluster['omp_threads']} FAISS thread(s) per shard. "
            "Load from the Python load generator (`shardsearch bench`, in-process), 2 channels.",
            "",
            "| workload | queries/s | vs raw batch | p50 | p99 | p99.9 | recall@10 | cached | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in cluster["runs"]:
            lat = row["latency_s"]
            lines.append(
                f"| {row['name']} | {row['qps']:,.0f} | {row['qps'] / raw['batch_qps']:.2f}x | {ms(lat.get('p50'))} | "
                f"{ms(lat.get('p99'))} | {ms(lat.get('p99.9'))} | {fmt(row['recall_at_10'])} | "
                f"{fmt(row['cached_fraction'])} | {row['errors'] or '-'} |"
            )
        lines += ["", "External load tool (h2load, one serialized unary request, 16 connections x 16 streams):", "",
                  "| unary Search via h2load | requests/s | HTTP 2xx |", "|---|---:|---:|"]
        for name, out in cluster["h2load"].items():
            if out:
                lines.append(f"| {name} | {fmt_num(out['qps'])} | {out['http_2xx']} |")
        lines.append("")
    lines += targets(results)
    lines += ANALYSIS.splitlines() + [""]
    lines += [
        "## Driving the coordinator with an external load tool",
        "",
        "h2load (Debian's `nghttp2-client`) speaks HTTP/2 and can send a serialized gRPC request: a 5-byte frame",
        "header (compressed flag 0, big-endian length) followed by the protobuf bytes. This leaves any Python client",
        "out of the measurement (h2load counts HTTP status only; gRPC errors travel in trailers, so check the",
        "coordinator's `shardsearch_coordinator_requests_total{code}` too):",
        "",
        "```bash",
        "python - <<'EOF'",
        "import struct, numpy as np",
        "from shardsearch.v1 import search_pb2",
        "q = np.load('bench-results/data/queries-1000000.npy')[0]",
        "m = search_pb2.SearchRequest(collection='bench', vector_f32=q.astype('<f4').tobytes(), k=10).SerializeToString()",
        "open('search.grpc', 'wb').write(struct.pack('>?I', False, len(m)) + m)",
        "EOF",
        "h2load -D 10 -c 16 -m 16 -t 1 -d search.grpc -H 'content-type: application/grpc' -H 'te: trailers' \\",
        "  http://127.0.0.1:50051/shardsearch.v1.SearchService/Search",
        "```",
        "",
        "With ghz: `ghz --insecure --call shardsearch.v1.SearchService/Search -d @ -c 64 -z 10s 127.0.0.1:50051`",
        "(server reflection supplies the schema), or the load generator here: `shardsearch bench --help`.",
        "",
    ]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the measured figure and by how much it is met or missed."""
    four = next((c for c in results["clusters"] if c["shards"] == 4), None)
    if four is None:
        return []
    raw = results["raw"]["batch_qps"]
    runs = {row["name"]: row for row in four["runs"]}

    def q(prefix: str) -> float:
        return next(row["qps"] for name, row in runs.items() if name.startswith(prefix))

    batch = q("batch 256 x 4 in flight, cache off")
    stream = q("stream")
    on = q("unary, 64 concurrent, batching on")
    off = q("unary, 64 concurrent, batching OFF")
    warm = q("unary, 64 concurrent, cache warm")
    half = next(row for name, row in runs.items() if name.startswith("unary, open loop"))
    ext = four["h2load"].get("cache off") or {}
    rows = [
        ("batched search >= 10,000 q/s", batch, 10_000),
        ("streaming search >= 10,000 q/s", stream, 10_000),
        ("batched search >= 70% of raw FAISS", batch / raw, 0.70),
        ("streaming search >= 70% of raw FAISS", stream / raw, 0.70),
        ("unary from an external tool (h2load) >= 3,000 q/s", ext.get("qps") or 0.0, 3_000),
        ("unary, batching on / off at 64 callers >= 3x", on / off if off else 0.0, 3.0),
        ("unary p99 <= 10 ms at half of peak (lower is better)", (half["latency_s"].get("p99") or 0) * 1e3, 10.0),
        ("warm cache hits >= 4,000 unary q/s", warm, 4_000),
    ]
    lines = ["## Targets (4 shards)", "", "| target | measured | met? |", "|---|---:|---|"]
    for name, measured, goal in rows:
        lower_better = "lower is better" in name
        met = measured <= goal if lower_better else measured >= goal
        verdict = "yes" if met else f"no: {measured / goal:.2f} of the target" if not lower_better else \
            f"no: {measured / goal:.1f}x the limit"
        lines.append(f"| {name} | {fmt_num(measured)} | {verdict} |")
    return [*lines, ""]


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def fmt_sweep(sweep: dict[Any, float]) -> str:
    return ", ".join(f"{p}: {r:.3f}" for p, r in sweep.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per workload")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--shards", default="4,1", help="cluster sizes to measure, comma-separated")
    parser.add_argument("--coordinators", type=int, default=2)
    parser.add_argument("--data-dir", default="bench-results/data")
    parser.add_argument("--json", default="bench-results/throughput.json")
    parser.add_argument("--out", default="docs/BENCHMARKS.md")
    args = parser.parse_args()

    base, qpath, gpath = make_data(args.n, args.queries, Path(args.data_dir))
    queries, gt = np.load(qpath), np.load(gpath)
    print("raw FAISS...", flush=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "n": args.n, "nq": args.queries, "batch": args.batch,
        "raw": raw_faiss(base, queries, gt, args.batch, args.seconds), "clusters": [],
    }
    print(json.dumps(results["raw"], default=str), flush=True)
    cores = os.cpu_count() or 1
    with RedisServer() as redis:
        for shards in (int(s) for s in args.shards.split(",")):
            print(f"cluster with {shards} shard(s)...", flush=True)
            omp = max(1, cores // shards)
            results["clusters"].append(measure_cluster(
                shards, args.coordinators, omp, base, qpath, gpath, args.seconds, args.warmup, redis.url,
                results["raw"]["refine_factor"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    command = "python benchmarks/throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("n", "queries", "seconds", "shards"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(results, command))
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
