"""A benchmark's tally: latencies, counts, error codes and recall of the measured calls, and the live progress line."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Sequence, TextIO

import numpy as np

from shardsearch.tools.bench.workload import Request
from shardsearch.v1 import search_pb2

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


class Recorder:
    """Counts measured calls as they finish; cheap enough to run on every answer in the hot loop.

    Latency is kept for answered calls only (one value per call, so a batch is one sample); failures are counted by
    gRPC status code name. Recall compares each answer's top 10 ids with the query's 10 true nearest neighbours.
    """

    def __init__(self, truth: Sequence[frozenset[str]] | None) -> None:
        self._truth = truth
        self.latencies: list[float] = []
        self.requests = 0
        self.queries = 0
        self.answered = 0
        self.warmup_answered = 0
        self.cached = 0
        self.partial = 0
        self.found = 0
        self.errors: Counter[str] = Counter()
        self.late = 0
        self.dropped = 0
        self.last_done = 0.0

    def answer(self, request: Request, started: float, responses: Sequence[search_pb2.SearchResponse]) -> None:
        self.last_done = time.perf_counter()
        self.latencies.append(self.last_done - started)
        self.requests += 1
        self.queries += len(request.queries)
        self.answered += len(responses)
        for response in responses:
            self.cached += response.cached
            self.partial += response.partial
        if self._truth is not None:
            for row, response in zip(request.queries, responses):
                self.found += len(self._truth[row].intersection([hit.id for hit in response.hits[:10]]))

    def failure(self, request: Request, code: str) -> None:
        self.last_done = time.perf_counter()
        self.requests += 1
        self.queries += len(request.queries)
        self.errors[code] += 1

    @property
    def recall_at_10(self) -> float | None:
        if self._truth is None or not self.answered:
            return None
        return self.found / (10 * self.answered)

    def latency_summary(self) -> dict[str, float | None]:
        """Percentiles, max and mean in seconds over every recorded latency (None when nothing was answered)."""
        if not self.latencies:
            return {name: None for name in (*PERCENTILES, "max", "mean")}
        values = np.asarray(self.latencies)
        points = np.percentile(values, list(PERCENTILES.values()))
        return {**dict(zip(PERCENTILES, points.tolist())), "max": float(values.max()), "mean": float(values.mean())}


def progress_line(recorder: Recorder, elapsed: float, qps: float, warming: bool) -> str:
    if warming:
        return f"{elapsed:6.1f}s  warming up  {qps:9.1f} q/s"
    if recorder.latencies:
        p50, p99 = np.percentile(np.asarray(recorder.latencies), [50, 99]) * 1000
        latency = f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
    else:
        latency = "p50       - ms  p99       - ms"
    errors = sum(recorder.errors.values())
    dropped = f"  late {recorder.late}  dropped {recorder.dropped}" if recorder.late or recorder.dropped else ""
    return f"{elapsed:6.1f}s  {qps:9.1f} q/s  {latency}  errors {errors}{dropped}"


async def report_progress(recorder: Recorder, started: float, measure_from: float, out: TextIO,
                          interval: float = 1.0) -> None:
    """Writes a progress line every `interval` until cancelled: in place on a terminal, one line each otherwise.

    q/s is over the last interval (answered queries, warm-up included) so a stall shows at once; percentiles and
    errors cover the measured calls so far.
    """
    tty = out.isatty()
    seen, then = 0, time.perf_counter()
    while True:
        await asyncio.sleep(interval)
        now = time.perf_counter()
        qps = (recorder.answered + recorder.warmup_answered - seen) / (now - then)
        seen, then = recorder.answered + recorder.warmup_answered, now
        line = progress_line(recorder, now - started, qps, now < measure_from)
        out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
        out.flush()
