"""Small searches on the shard's event loop: the same answers as in the executor, never waiting for a held lock."""

import time

import numpy as np

from shardsearch import codec
from shardsearch.shard_server.batch_search import search_batch
from shardsearch.shard_server.index import Collection
from shardsearch.shard_server.inline import InlinePolicy
from shardsearch.v1 import search_pb2


def trained(n: int = 3000, dim: int = 16) -> tuple[Collection, np.ndarray]:
    spec = search_pb2.Collection(name="t", dim=dim, metric=search_pb2.METRIC_L2,
                                 index=search_pb2.IndexOptions(train_threshold=2000))
    coll = Collection(spec)
    x = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    coll.upsert([str(i) for i in range(n)], x)
    while coll.pending_work():
        coll.maintain()
    coll.upsert(["fresh"], x[:1] + 0.01)  # one vector in the exact buffer too
    return coll, x


def test_try_search_answers_as_search_does_and_gives_up_at_once_while_the_lock_is_held() -> None:
    coll, x = trained()
    queries = x[:3] + 0.001
    expected, got = coll.search(queries, 10, 8), coll.try_search(queries, 10, 8)
    assert got is not None
    assert np.array_equal(got.labels, expected.labels) and np.allclose(got.scores, expected.scores)
    assert coll.ids_for(got.labels)[:2] == ["0", "fresh"]
    with coll._lock:  # a write or maintenance holds the collection
        assert coll.try_search(queries, 10, 8) is None
        assert search_batch(coll, [(queries, 10, None)], 8, False, wait=False) is None


def test_an_inline_batch_is_split_back_like_an_executor_batch() -> None:
    coll, x = trained()
    items = [(x[:1], 10, None), (x[1:3], 5, None)]
    inline, executor = search_batch(coll, items, 8, False, wait=False), search_batch(coll, items, 8, False)
    assert inline is not None and executor is not None
    for a, b in zip(inline, executor, strict=True):
        assert (a.n, a.k, list(a.ids)) == (b.n, b.k, list(b.ids))
        assert np.array_equal(codec.unpack(a.scores_f32, a.k, "s"), codec.unpack(b.scores_f32, b.k, "s"))


def test_the_policy_inlines_only_small_batches_measured_cheap_and_never_on_a_gpu() -> None:
    coll, _ = trained(n=10)
    policy = InlinePolicy(enabled=True, max_rows=4, max_s=0.001)
    assert not policy.allows(coll, 1)  # never measured: the executor first
    policy.record(coll, 1, 0.0002)
    assert policy.allows(coll, 1) and policy.allows(coll, 4) and not policy.allows(coll, 5)
    for _ in range(20):
        policy.record(coll, 2, 0.01)  # searches grew slow (a bigger index, a higher nprobe): back to the executor
    assert not policy.allows(coll, 1)
    policy.record(coll, 64, 0.0)  # a big batch says nothing about small ones
    assert not policy.allows(coll, 1)
    gpu = InlinePolicy(enabled=False)
    gpu.record(coll, 1, 0.0)
    assert not gpu.allows(coll, 1)


def test_overlapping_searches_stay_in_the_executor_where_they_batch() -> None:
    coll, _ = trained(n=10)
    policy = InlinePolicy(enabled=True, max_rows=4, max_s=0.001, gap_s=0.5, hold_s=0.2)
    policy.record(coll, 1, 0.0001)
    policy.arrival(busy=False)
    assert policy.allows(coll, 1)
    policy.arrival(busy=True)  # another search was queued or running when this one came
    assert not policy.allows(coll, 1)
    time.sleep(0.25)
    assert policy.allows(coll, 1)
    policy.ran_inline()
    policy.arrival(busy=False)  # started right after an inline search ended: it was waiting for the loop
    assert not policy.allows(coll, 1)
