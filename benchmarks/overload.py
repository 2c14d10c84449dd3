"""Overload benchmark: offer twice the coordinator's peak and watch it shed, keep answering, and hold its memory.

    .venv/bin/python benchmarks/overload.py --n 200000 --out docs/BENCHMARKS.md

One run: a 4-shard cluster (one coordinator process, so that it is the bottleneck) holding n embedding-like vectors;
the closed-loop unary peak P; then an open loop at 2P (arrival times fixed in advance, latency measured from them),
for each of the coordinator settings in PHASES, each followed by a recovery run at P/2. The coordinator's resident memory is sampled every second throughout. The load
generator shares the machine's cores with the cluster; the figures are for comparison within the run.
"""

from __future__ import annotations

import argparse
import asyncio
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
from shardsearch.bench import BenchConfig, run_bench
from shardsearch.local import LocalCluster
from shardsearch.v1 import search_pb2

SECTION = "## Overload"
# Coordinator settings compared: the defaults, then gRPC core's own (much larger) limits on calls waiting for the
# event loop, then the defaults without the batch queue-time limit.
PHASES = [
    ("defaults (max_pending_rpcs 256)", []),
    ("max_pending_rpcs 0: gRPC's own pending limits", ["--max-pending-rpcs", "0"]),
    ("defaults, queue-time shedding off", ["--batch-max-queue-time-ms", "0"]),
]


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


def h2load_rate(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate()
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    return float(match.group(1)) if match else 0.0


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {code: int(after[code] - before.get(code, 0)) for code in after if after[code] - before.get(code, 0)}


def run(n: int, seconds: float, data_dir: Path) -> dict[str, Any]:
    base, qpath, gpath = make_data(n, 1000, data_dir)
    query = np.load(qpath)[0]
    results: dict[str, Any] = {"n": n, "machine": machine(), "phases": []}
    for shedding, args in PHASES:
        with LocalCluster(shards=4, omp_threads=1, metrics=True, coordinator_args=args) as cluster:
            address = cluster.address
            coordinator = cluster.coordinator
            assert coordinator is not None and coordinator.popen is not None
            print(f"{shedding}: loading {n} vectors...", flush=True)
            load(address, base)
            sampler = MemorySampler(coordinator.popen.pid)
            sampler.start()
            before = search_codes(coordinator.metrics_port)
            started = time.monotonic()
            h2load_rate(h2load(address, query, seconds, None))
            peak_codes = delta(search_codes(coordinator.metrics_port), before)
            # The coordinator's own count of answers: h2load's rate would include calls refused before any handler.
            peak = peak_codes.get("OK", 0) / (time.monotonic() - started)
            print(f"  peak (h2load closed loop): {peak:.0f} Search/s {peak_codes}", flush=True)

            async def overload() -> dict[str, Any]:
                flood = h2load(address, query, 2 * seconds, 2 * peak)
                await asyncio.sleep(1.0)  # let the flood build up
                row = await probe(address, qpath, gpath, "caller at 50 q/s during the flood", mode="open",
                                  rate=50, duration=2 * seconds - 2, timeout=2.0)
                row["flood_rate"] = await asyncio.get_running_loop().run_in_executor(None, h2load_rate, flood)
                return row

            rss_before = sampler.mark()
            before = search_codes(coordinator.metrics_port)
            flood = asyncio.run(overload())
            flood["codes"] = delta(search_codes(coordinator.metrics_port), before)
            flood["rss_mib_before"], flood["rss_mib_after"] = rss_before, sampler.mark()
            print(f"  flood at {2 * peak:.0f}/s offered, h2load got {flood['flood_rate']:.0f}/s; coordinator "
                  f"answered {flood['codes']}", flush=True)
            after = asyncio.run(probe(address, qpath, gpath, f"after: open loop at {peak / 2:.0f} q/s", mode="open",
                                      rate=peak / 2, duration=seconds, timeout=2.0))
            sampler.stop()
            results["phases"].append({
                "shedding": shedding, "peak": peak, "peak_codes": peak_codes, "flood": flood, "after": after,
                "rss_mib": sampler.samples,
            })
    return results


def report(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    lines = [
        SECTION, "",
        f"`{command}` on {m.get('cores')} cores ({m.get('cpu', '')}); {results['n']:,} vectors in 4 shards, one "
        "coordinator process, unary Search, result cache off. h2load (C) drives the peak (16 connections x 16 "
        "streams; the peak is the coordinator's count of answers a second), then offers twice that rate for the "
        "flood (16 connections x up to 256 streams); meanwhile our load generator, as one more caller, sends 50 "
        "searches/s with a 2 s deadline and records what it gets. Codes are the coordinator's own counts "
        "(`shardsearch_coordinator_requests_total`): calls gRPC core refused before any handler ran (CANCELLED) "
        "are not among them, but are in h2load's completed calls. RSS is the coordinator's resident memory, "
        "sampled every second.",
        "",
        "| coordinator settings | peak Search/s | flood offered / completed (any status) | coordinator answers during the flood | "
        "caller: ok, p50, p99 of answered | caller errors | after the flood, at half peak: p50, p99 | "
        "coordinator RSS MiB (before -> after flood; min-max over the run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in results["phases"]:
        flood, after = phase["flood"], phase["after"]
        codes = ", ".join(f"{code} {count:,}" for code, count in sorted(flood["codes"].items()))
        errors = ", ".join(f"{code} {count}" for code, count in flood["errors"].items()) or "none"
        samples = [mib for _, mib in phase["rss_mib"]]
        ok = flood["answered"] / max(1, flood["requests"])
        lines.append(
            f"| {phase['shedding']} | {phase['peak']:,.0f} | {2 * phase['peak']:,.0f} / {flood['flood_rate']:,.0f} "
            f"| {codes} | {ok:.0%}, {ms(flood['latency_s'].get('p50'))}, {ms(flood['latency_s'].get('p99'))} "
            f"| {errors} | {ms(after['latency_s'].get('p50'))}, {ms(after['latency_s'].get('p99'))} "
            f"| {flood['rss_mib_before']:.0f} -> {flood['rss_mib_after']:.0f}; {min(samples):.0f}-{max(samples):.0f} |"
        )
    shed_by_coordinator = sum(p["flood"]["codes"].get("RESOURCE_EXHAUSTED", 0) for p in results["phases"])
    after_errors = "; ".join(
        f"{p['shedding']}: {', '.join(f'{c} {n}' for c, n in p['after']['errors'].items()) or 'none'}"
        for p in results["phases"]
    )
    lines += [
        "",
        "Where the flood is shed: a coordinator process on these cores picks up fewer calls a second than h2load "
        "offers, so the excess waits in gRPC core, before any handler. `max_pending_rpcs` bounds that wait (gRPC "
        "core refuses past it, as CANCELLED); with gRPC's own limits the same calls wait until the caller's deadline. "
        f"RESOURCE_EXHAUSTED from the coordinator's own limits during the floods: {shed_by_coordinator:,} (they act "
        "on calls that reached a handler; here those finished within the latency target). Caller errors at half "
        f"peak after the flood: {after_errors}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
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
