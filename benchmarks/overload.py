"""Overload benchmark: offer twice the cluster's peak and watch the coordinator shed, keep answering, and hold its memory.

    .venv/bin/python benchmarks/overload.py --n 100000 --out docs/BENCHMARKS.md

One run: a 4-shard cluster with one coordinator process, holding n embedding-like vectors, in two regimes:
- the shards are the limit: every shard searches exactly (its training threshold is above its share of n), as
  shards do when the data per shard, k, nprobe or re-ranking make the search dominate;
- the coordinator is the limit: cheap IVF-PQ searches, so the one Python process in front is the bottleneck.
For each phase: the closed-loop unary peak P (answers the coordinator counted OK a second); then an open loop at 2P
while our load generator, as one more caller, records what it gets; then a recovery run at P/2. The shard processes
run at nice +10: on Kubernetes they have nodes of their own, here they share the coordinator's cores. The
coordinator's resident memory is sampled every second throughout. Figures are for comparison within the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from report import save
from throughput import COLLECTION, load, machine, make_data, ms

from shardsearch import codec
from shardsearch.tools.bench import BenchConfig, run_bench
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2

SECTION = "## Overload"
EXACT = "the shards are the limit (exact search)"
CHEAP = "the coordinator is the limit (IVF-PQ)"
# (regime, coordinator settings, coordinator flags): the defaults in both regimes, then gRPC core's own (much
# larger) limits on calls waiting for the event loop where those calls pile up.
PHASES = [
    (EXACT, "defaults", []),
    (CHEAP, "defaults (max_pending_rpcs 256)", []),
    (CHEAP, "max_pending_rpcs 0: gRPC's own pending limits", ["--max-pending-rpcs", "0"]),
]
SHARD_NICE = 10


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic() - self._t0, rss_mib(self.pid)))

    def mark(self) -> float:
        return rss_mib(self.pid)

    def stop(self) -> None:
        self._stop.set()


async def probe(address: str, qpath: Path, gpath: Path, name: str, **settings: Any) -> dict[str, Any]:
    """A caller's view: our load generator's latency and error counts for its own requests."""
    config = BenchConfig(address=address, collection=COLLECTION, queries=str(qpath), ground_truth=str(gpath), k=10,
                         skip_cache=True, **settings)
    result = await run_bench(config)
    row = {"name": name, **result.to_json()}
    print(f"  {name:<52} {result.qps:>8.0f} q/s answered  p50 {ms(result.latency_s.get('p50'))}  "
          f"p99 {ms(result.latency_s.get('p99'))}  errors {result.errors}  late {result.late}", flush=True)
    return row


def search_codes(metrics_port: int) -> dict[str, float]:
    """The coordinator's Search calls so far, by gRPC code."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    pattern = r'^shardsearch_coordinator_requests_total\{code="(\w+)",method="Search"\} (\S+)$'
    return {code: float(value) for code, value in re.findall(pattern, text, re.M)}


def h2load(address: str, query: np.ndarray, seconds: float, rate: float | None) -> subprocess.Popen[str]:
    """Unary Search from h2load (C): closed loop (16 connections x 16 streams), or `rate` requests/s in all."""
    message = search_pb2.SearchRequest(
        collection=COLLECTION, vector_f32=codec.pack(query), k=10, skip_cache=True).SerializeToString()
    frame = Path(tempfile.mkstemp(suffix=".grpc")[1])
    frame.write_bytes(struct.pack(">?I", False, len(message)) + message)
    clients = 16
    pace = ["--rps", str(max(1, round(rate / clients)))] if rate else []
    cmd = ["h2load", "-D", str(int(seconds)), "-c", str(clients), "-m", "256" if rate else "16", "-t", "1", *pace,
           "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://{address}/shardsearch.v1.SearchService/Search"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def h2load_result(proc: subprocess.Popen[str]) -> tuple[float, int]:
    """(completed calls a second, completed calls) by h2load's count: any gRPC status, or a reset stream."""
    out, _ = proc.communicate()
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    return (float(rate.group(1)) if rate else 0.0), (int(done.group(1)) if done else 0)


def renice(pid: int, niceness: int) -> None:
    """Sets the niceness of every thread of `pid` (on Linux it is per thread)."""
    for tid in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(tid.name), niceness)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {code: int(after[code] - before.get(code, 0)) for code in after if after[code] - before.get(code, 0)}


def run(n: int, seconds: float, data_dir: Path) -> dict[str, Any]:
    base, qpath, gpath = make_data(n, 1000, data_dir)
    query = np.load(qpath)[0]
    results: dict[str, Any] = {"n": n, "machine": machine(), "phases": []}
    for regime, shedding, args in PHASES:
        with LocalCluster(shards=4, omp_threads=1, metrics=True, coordinator_args=args) as cluster:
            address = cluster.address
            coordinator = cluster.coordinator
            assert coordinator is not None and coordinator.popen is not None
            print(f"{regime}, {shedding}: loading {n} vectors...", flush=True)
            load(address, base, train_threshold=n if regime == EXACT else 0)
            for shard in cluster.shard_procs:
                assert shard.popen is not None
                renice(shard.popen.pid, SHARD_NICE)
            sampler = MemorySampler(coordinator.popen.pid)
            sampler.start()
            before = search_codes(coordinator.metrics_port)
            started = time.monotonic()
            h2load_result(h2load(address, query, seconds, None))
            peak_codes = delta(search_codes(coordinator.metrics_port), before)
            # The coordinator's own count of answers: h2load's rate would include calls refused before any handler.
            peak = peak_codes.get("OK", 0) / (time.monotonic() - started)
            print(f"  peak (h2load closed loop): {peak:.0f} Search/s {peak_codes}", flush=True)

            async def overload() -> dict[str, Any]:
                flood = h2load(address, query, 2 * seconds, 2 * peak)
                await asyncio.sleep(1.0)  # let the flood build up
                row = await probe(address, qpath, gpath, "caller at 50 q/s during the flood", mode="open",
                                  rate=50, duration=2 * seconds - 2, timeout=2.0)
                row["flood_rate"], row["flood_done"] = await asyncio.get_running_loop().run_in_executor(
                    None, h2load_result, flood)
                return row

            rss_before = sampler.mark()
            before = search_codes(coordinator.metrics_port)
            flood = asyncio.run(overload())
            flood["codes"] = delta(search_codes(coordinator.metrics_port), before)
            # h2load's completed calls that no handler answered: gRPC core refused them (CANCELLED) or they ran
            # out of time waiting for the event loop. The coordinator's count includes the probe's calls.
            probe_handled = flood["requests"] - flood["errors"].get("CANCELLED", 0)
            flood["refused_in_core"] = max(0, flood["flood_done"] - (sum(flood["codes"].values()) - probe_handled))
            flood["rss_mib_before"], flood["rss_mib_after"] = rss_before, sampler.mark()
            print(f"  flood at {2 * peak:.0f}/s offered, h2load got {flood['flood_rate']:.0f}/s; coordinator "
                  f"answered {flood['codes']}", flush=True)
            after = asyncio.run(probe(address, qpath, gpath, f"after: open loop at {peak / 2:.0f} q/s", mode="open",
                                      rate=peak / 2, duration=seconds, timeout=2.0))
            sampler.stop()
            results["phases"].append({
                "regime": regime, "shedding": shedding, "peak": peak, "peak_codes": peak_codes, "flood": flood, "after": after,
                "rss_mib": sampler.samples,
            })
    return results


def report(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    lines = [
        SECTION, "",
        f"`{command}` on {m.get('cores')} cores ({m.get('cpu', '')}); {results['n']:,} vectors in 4 shards, one "
        "coordinator process, unary Search, result cache off, shard processes at nice +10 (on Kubernetes they have "
        "nodes of their own). Two regimes: every shard searching exactly (the shards are the limit), and cheap "
        "IVF-PQ searches (the one Python coordinator process is the limit). h2load (C) drives the peak (16 "
        "connections x 16 streams; the peak is the coordinator's count of OK answers a second), then offers twice "
        "that rate for the flood (16 connections x up to 256 streams); meanwhile our load generator, as one more "
        "caller, sends 50 searches/s with a 2 s deadline and records what it gets. Codes are the coordinator's own "
        "counts (`shardsearch_coordinator_requests_total`); calls no handler answered (gRPC core refused them "
        "before any Python ran: CANCELLED) are h2load's completed calls less those, about. RSS is the "
        "coordinator's resident memory, sampled every second.",
        "",
        "| regime | coordinator settings | peak Search/s | flood offered / completed (any status) | coordinator "
        "answers during the flood | refused by gRPC core, about | caller: ok, p50, p99 of answered | caller errors "
        "| after the flood, at half peak: p50, p99 | coordinator RSS MiB (before -> after flood; min-max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in results["phases"]:
        flood, after = phase["flood"], phase["after"]
        codes = ", ".join(f"{code} {count:,}" for code, count in sorted(flood["codes"].items()))
        errors = ", ".join(f"{code} {count}" for code, count in flood["errors"].items()) or "none"
        samples = [mib for _, mib in phase["rss_mib"]]
        ok = flood["answered"] / max(1, flood["requests"])
        lines.append(
            f"| {phase['regime']} | {phase['shedding']} | {phase['peak']:,.0f} "
            f"| {2 * phase['peak']:,.0f} / {flood['flood_rate']:,.0f} | {codes} | {flood['refused_in_core']:,} "
            f"| {ok:.0%}, {ms(flood['latency_s'].get('p50'))}, {ms(flood['latency_s'].get('p99'))} "
            f"| {errors} | {ms(after['latency_s'].get('p50'))}, {ms(after['latency_s'].get('p99'))} "
            f"| {flood['rss_mib_before']:.0f} -> {flood['rss_mib_after']:.0f}; {min(samples):.0f}-{max(samples):.0f} |"
        )
    after_errors = "; ".join(
        f"{p['regime']}, {p['shedding']}: {', '.join(f'{c} {n}' for c, n in p['after']['errors'].items()) or 'none'}"
        for p in results["phases"]
    )
    lines += [
        "",
        "Where the flood is shed depends on what the limit is. When it is the shards, the coordinator takes every "
        "call from gRPC core and its own limits answer the excess RESOURCE_EXHAUSTED with a message: the adaptive "
        "cap on searches in flight (kept near the 250 ms latency target) and the batch queue's limits. When it is "
        "the coordinator's own Python process, the excess never reaches a handler: grpc.aio takes about one new call "
        "per event-loop turn, and a refusal costs that process nearly what an answer does (the per-call cost is "
        "gRPC's own machinery), so no handler-level limit can take more calls; they wait in gRPC core, where "
        "`max_pending_rpcs` bounds the wait and core refuses the rest as CANCELLED; with gRPC's own limits the "
        "same calls wait until the caller's deadline. Scaling the coordinator (the HorizontalPodAutoscaler, or "
        "`--reuse-port` processes per pod) keeps it out of that regime. Caller errors at half peak after the flood: "
        f"{after_errors}.",
        "", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shardsearch-bench-data")
    parser.add_argument("--out", type=Path, help="Markdown report to update (its Overload section)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/overload.json"))
    args = parser.parse_args()
    results = run(args.n, args.seconds, args.data_dir)
    command = f"python benchmarks/overload.py --n {args.n} --seconds {args.seconds:g}"
    save(results, args.json, SECTION, report(results, command), args.out)


if __name__ == "__main__":
    main()
