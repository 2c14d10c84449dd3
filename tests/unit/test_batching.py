"""The dynamic batcher on its own: gathering, limits, expiry, cancellation, errors and metrics (no timed asserts)."""

from __future__ import annotations

import asyncio
from typing import Hashable

import pytest
from prometheus_client import CollectorRegistry

from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.errors import DeadlineExceeded, ResourceExhausted


class Recorder:
    """A run() that records each batch and can be held shut, so tests decide when batches finish."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self, key: Hashable, items: list[int], timeout: float) -> list[int | BaseException]:
        self.batches.append((key, list(items)))
        self.started.set()
        await self.gate.wait()
        return [ValueError("odd") if item % 2 else item * 10 for item in items]


def make(recorder: Recorder, **config: int | bool) -> tuple[Batcher[int, int], CollectorRegistry]:
    registry = CollectorRegistry()
    return Batcher("test batcher", BatchingConfig(**config), recorder, BatchMetrics(registry, "t")), registry  # type: ignore[arg-type]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def block_first(batcher: Batcher[int, int], recorder: Recorder) -> asyncio.Task[int]:
    """Occupies the only in-flight slot with one batch that waits on the gate."""
    recorder.gate.clear()
    first = asyncio.create_task(batcher.submit("k", 0, 1, 60))
    await recorder.started.wait()
    return first


async def test_a_lone_request_does_not_wait_for_the_queue_delay() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder, max_queue_delay_us=600_000_000)  # ten minutes
    assert await asyncio.wait_for(batcher.submit("k", 4, 1, 60), 30) == 40


async def test_requests_queued_behind_a_running_batch_go_out_together() -> None:
    recorder = Recorder()
    batcher, registry = make(recorder, max_in_flight=1, max_batch_size=100)
    first = await block_first(batcher, recorder)
    rest = [asyncio.create_task(batcher.submit("k", i, 1, 60)) for i in range(2, 42, 2)]
    await asyncio.sleep(0)
    assert batcher.waiting == 20 and sample(registry, "t_batch_queue_depth") == 20
    recorder.gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 10 for i in range(2, 42, 2)]
    assert [items for _, items in recorder.batches] == [[0], list(range(2, 42, 2))]
    assert sample(registry, "t_batch_size_count") == 2 and sample(registry, "t_batch_size_sum") == 21
    assert sample(registry, "t_batch_queue_duration_seconds_count") == 21
    assert sample(registry, "t_batch_compute_duration_seconds_count") == 2
    assert sample(registry, "t_batch_queue_depth") == 0


async def test_batches_respect_max_batch_size_in_rows_and_never_mix_keys() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder, max_in_flight=1, max_batch_size=10)
    first = await block_first(batcher, recorder)
    tasks = [asyncio.create_task(batcher.submit(key, 2, 4, 60)) for key in ("a", "a", "b", "a", "b")]
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(first, *tasks)
    shapes = [(key, len(items)) for key, items in recorder.batches[1:]]
    # 4 rows each, 10 rows max: two "a" requests fit in one batch, the third waits; "b"s go together.
    assert sorted(shapes) == [("a", 1), ("a", 2), ("b", 2)]


async def test_a_full_queue_refuses_with_resource_exhausted() -> None:
    recorder = Recorder()
    batcher, registry = make(recorder, max_in_flight=1, max_queue_size=3)
    first = await block_first(batcher, recorder)
    queued = [asyncio.create_task(batcher.submit("k", 2, 1, 60)) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="3 requests already queued"):
        await batcher.submit("k", 2, 1, 60)
    assert sample(registry, "t_batch_rejected_total", reason="queue_full") == 1
    recorder.gate.set()
    assert await asyncio.gather(first, *queued) == [0, 20, 20, 20]


async def test_requests_whose_deadline_passed_in_the_queue_never_reach_run() -> None:
    recorder = Recorder()
    batcher, registry = make(recorder, max_in_flight=1)
    first = await block_first(batcher, recorder)
    doomed = asyncio.create_task(batcher.submit("k", 2, 1, 0.01))
    kept = asyncio.create_task(batcher.submit("k", 4, 1, 60))
    await asyncio.sleep(0.05)
    recorder.gate.set()
    with pytest.raises(DeadlineExceeded, match="in the test batcher queue"):
        await doomed
    assert await kept == 40 and await first == 0
    assert [items for _, items in recorder.batches] == [[0], [4]]
    assert sample(registry, "t_batch_rejected_total", reason="expired") == 1


async def test_cancelled_callers_are_skipped() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder, max_in_flight=1)
    first = await block_first(batcher, recorder)
    gone = asyncio.create_task(batcher.submit("k", 2, 1, 60))
    kept = asyncio.create_task(batcher.submit("k", 4, 1, 60))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.gate.set()
    assert await kept == 40 and await first == 0
    assert [items for _, items in recorder.batches] == [[0], [4]]


async def test_errors_reach_only_their_own_callers_and_a_failing_run_fails_its_batch() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder)
    with pytest.raises(ValueError, match="odd"):
        await batcher.submit("k", 3, 1, 60)
    assert await batcher.submit("k", 2, 1, 60) == 20

    async def broken(key: Hashable, items: list[int], timeout: float) -> list[int]:
        raise RuntimeError("shard on fire")

    failing: Batcher[int, int] = Batcher("b", BatchingConfig(), broken, BatchMetrics(CollectorRegistry(), "u"))
    results = await asyncio.gather(*(failing.submit("k", i, 1, 60) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_queue_delay_lets_a_batch_fill_while_others_run() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder, max_in_flight=2, max_queue_delay_us=200_000, max_batch_size=4)
    first = await block_first(batcher, recorder)  # one slot busy, one free: a new request waits for company
    tasks = [asyncio.create_task(batcher.submit("k", 2, 1, 60))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(batcher.submit("k", 4, 1, 60)) for _ in range(3)]
    recorder.gate.set()
    await asyncio.gather(first, *tasks)
    assert [items for _, items in recorder.batches] == [[0], [2, 4, 4, 4]]


async def test_batching_off_runs_each_request_alone() -> None:
    recorder = Recorder()
    batcher, registry = make(recorder, enabled=False)
    assert await asyncio.gather(*(batcher.submit("k", 2, 1, 60) for _ in range(6))) == [20] * 6
    assert [items for _, items in recorder.batches] == [[2]] * 6
    assert sample(registry, "t_batch_size_count") == 6


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        BatchingConfig(max_batch_size=0)


async def test_a_queue_that_stopped_draining_sheds_new_requests_fast() -> None:
    recorder = Recorder()
    batcher, registry = make(recorder, max_in_flight=1, max_queue_time_ms=20)
    first = await block_first(batcher, recorder)
    queued = asyncio.create_task(batcher.submit("k", 2, 1, 60))
    await asyncio.sleep(0.05)  # the queued request is now older than the limit
    with pytest.raises(ResourceExhausted, match="ms behind"):
        await batcher.submit("other", 4, 1, 60)
    assert sample(registry, "t_batch_rejected_total", reason="queue_time") == 1
    recorder.gate.set()  # the queue drains: what was admitted is answered, and new requests are taken again
    assert await first == 0 and await queued == 20
    assert await batcher.submit("k", 6, 1, 60) == 60


async def test_a_lone_request_runs_in_its_callers_task_and_the_idle_dispatcher_still_honours_max_in_flight() -> None:
    recorder = Recorder()
    batcher, _ = make(recorder, max_in_flight=1, max_batch_size=100)
    first = await block_first(batcher, recorder)  # starts the dispatcher: one request queues behind the first
    second = asyncio.create_task(batcher.submit("k", 2, 1, 60))
    await asyncio.sleep(0)
    recorder.gate.set()
    assert (await first, await second) == (0, 20)
    await asyncio.sleep(0)  # the dispatcher now idles, waiting for an arrival
    recorder.gate.clear()
    recorder.started.clear()
    third = asyncio.create_task(batcher.submit("k", 4, 1, 60))  # nothing waits or runs: the fast path
    await recorder.started.wait()
    fourth = asyncio.create_task(batcher.submit("k", 6, 1, 60))
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert [items for _, items in recorder.batches] == [[0], [2], [4]]  # the fourth waits for the only slot
    recorder.gate.set()
    assert (await third, await fourth) == (40, 60)
    assert [items for _, items in recorder.batches] == [[0], [2], [4], [6]]
