"""When a benchmark sends: the plan that orders requests and ends the run, and the closed and open loops."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Callable, Sequence

from shardsearch.tools.bench.callers import Caller, CallFailed
from shardsearch.tools.bench.recorder import Recorder
from shardsearch.tools.bench.workload import Request

LATE_AFTER_S = 0.001
"""Open loop: a send that slips by more than this and more than one arrival interval counts as late."""


class Plan:
    """Hands out requests in query order until the run is over: warm-up by time, then a query budget or a deadline.

    With `queries` set, exactly that many queries are measured: a batch that would overshoot is rebuilt shorter with
    `build` (once, at the very end, so the hot path never builds a message).
    """

    def __init__(self, requests: Sequence[Request], build: Callable[[tuple[int, ...]], Request], warmup: float,
                 duration: float, queries: int | None) -> None:
        self._requests = itertools.cycle(requests)
        self._build = build
        self.start = time.perf_counter()
        self.measure_from = self.start + warmup
        self._stop = float("inf") if queries else self.measure_from + duration
        self._left = queries

    def next(self, now: float) -> tuple[Request, bool] | None:
        """The next request and whether it is measured, or None once the run is over (`now`: its send time)."""
        if now >= self._stop:
            return None
        request, measured = next(self._requests), now >= self.measure_from
        if measured and self._left is not None:
            if self._left <= 0:
                return None
            if len(request.queries) > self._left:
                request = self._build(request.queries[:self._left])
            self._left -= len(request.queries)
        return request, measured


async def issue(caller: Caller, recorder: Recorder, request: Request, measured: bool, started: float) -> None:
    """Sends one request and records its outcome; warm-up answers only feed the progress line's rate."""
    try:
        responses = await caller(request.payload)
    except CallFailed as exc:
        if measured:
            recorder.failure(request, exc.code)
        return
    if measured:
        recorder.answer(request, started, responses)
    else:
        recorder.warmup_answered += len(responses)


async def closed_loop(plan: Plan, caller: Caller, recorder: Recorder, concurrency: int) -> None:
    """`concurrency` workers, each sending its next request as soon as its previous one is answered."""
    async def worker() -> None:
        while (step := plan.next(now := time.perf_counter())) is not None:
            await issue(caller, recorder, *step, now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(plan: Plan, caller: Caller, recorder: Recorder, interval: float, max_outstanding: int) -> None:
    """Sends request i at start + i * interval whatever is in flight; latency counts from that scheduled time.

    An arrival that finds `max_outstanding` calls in flight is dropped (counted, not sent); one sent behind
    schedule is counted late, and its latency still starts at its scheduled time.
    """
    inflight: set[asyncio.Task[None]] = set()
    for i in itertools.count():
        due = plan.start + i * interval
        await asyncio.sleep(max(0.0, due - time.perf_counter()))  # also yields when behind, so answers get read
        step = plan.next(due)
        if step is None:
            break
        request, measured = step
        if len(inflight) >= max_outstanding:
            if measured:
                recorder.dropped += 1
            continue
        if measured and time.perf_counter() - due > max(LATE_AFTER_S, interval):
            recorder.late += 1
        task = asyncio.create_task(issue(caller, recorder, request, measured, due))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    await asyncio.gather(*inflight)
