"""The re-ranking depth (`ann.depth`, shard_server/refine_fit.py): a shard fits it to its data and to the number of
shards a search reaches, on real FAISS indexes; an explicit refine_factor is used as it is."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shardsearch import index_params
from shardsearch.shard_server import ann, refine_fit
from shardsearch.shard_server.index import Collection
from shardsearch.tools.datasets import embedding_like, exact_neighbours
from shardsearch.v1 import search_pb2
from tests.conftest import recall_at_10


def test_an_unfitted_depth_is_k_times_the_factor_whatever_the_shard_count() -> None:
    chosen = index_params.choose(32, 20_000, search_pb2.IndexOptions())
    assert chosen.refine_factor == 20 and chosen.refine_by_shards == ()
    assert [ann.depth(chosen, 10, shards) for shards in (0, 1, 4, 64)] == [200] * 4
    assert ann.depth(replace(chosen, refine_factor=3), 10, 8) == 30


def test_a_fitted_depth_follows_the_shard_count_with_a_floor_for_small_k() -> None:
    chosen = replace(index_params.choose(32, 20_000, search_pb2.IndexOptions()), refine_factor=12,
                     refine_by_shards=(12, 8, 6, 4, 3, 2))
    # 1, 2, 4, 8, 16, 32 shards; between them the largest fitted count <= S (the deeper depth)
    assert [ann.depth(chosen, 10, s) for s in (0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 500)] == [
        120, 120, 80, 80, 60, 60, 40, 30, 30, 20, 20]
    assert ann.depth(chosen, 1, 32) == 20 and ann.depth(chosen, 2, 1) == 24  # at least min(k x 20, 20)
    assert ann.depth(chosen, 100, 4) == 600
    assert refine_fit.factor(chosen, 4) == 6 and refine_fit.factor(replace(chosen, refine_by_shards=()), 4) == 12


def test_the_merged_estimate_weights_a_shards_first_neighbours() -> None:
    # one shard: all 10 count alike; more shards: a shard's first neighbours count most
    assert refine_fit.weights(1)[10] == pytest.approx(1.0)
    w = refine_fit.weights(4)
    assert w.sum() == pytest.approx(1.0) and (w * np.arange(11)).sum() == pytest.approx(2.5)
    only_first = np.ones((3, 10), np.int32)  # one candidate at least as good as each neighbour: the 1st found
    assert refine_fit.merged_recall(only_first, 1) == pytest.approx(0.1)
    # 32 shards: a shard holds M ~ Binomial(10, 1/32) of the top 10, rarely more than one: P(M >= 1) / E[M]
    assert refine_fit.merged_recall(only_first, 32) == pytest.approx((1 - (31 / 32) ** 10) / (10 / 32))
    assert refine_fit.merged_recall(np.tile(np.arange(1, 11, dtype=np.int32), (3, 1)), 4) == pytest.approx(1.0)


def collection(dim: int, threshold: int, **index: int) -> Collection:
    return Collection(search_pb2.Collection(
        name="t", dim=dim, metric=search_pb2.METRIC_INNER_PRODUCT,
        index=search_pb2.IndexOptions(train_threshold=threshold, **index)))


def four_shards(dim: int, base: np.ndarray, **index: int) -> list[Collection]:
    ids = np.array([str(i) for i in range(len(base))])
    owner = np.arange(len(base)) % 4
    shards = []
    for s in range(4):
        part = collection(dim, len(base) // 8, **index)
        part.upsert(ids[owner == s].tolist(), base[owner == s])
        part.maintain()
        assert part.info().trained
        shards.append(part)
    return shards


def merged_recall(shards: list[Collection], queries: np.ndarray, gt: np.ndarray, reach: int) -> float:
    found, scores = [], []
    for part in shards:
        result = part.search(queries, 10, shards=reach)
        found.append(np.array([[int(i) if i else -1 for i in part.ids_for(row)] for row in result.labels]))
        scores.append(np.where(result.labels >= 0, result.scores, -np.inf))
    merged = np.take_along_axis(np.concatenate(found, 1), np.argsort(-np.concatenate(scores, 1), 1)[:, :10], 1)
    return recall_at_10(merged.tolist(), gt)


@pytest.mark.parametrize("dim, intrinsic", [(128, 32), (32, 16)])
def test_four_fitted_shards_lose_little_against_the_whole_depth_and_re_rank_no_more(dim: int, intrinsic: int) -> None:
    """On data PQ orders well (128-d) the fit re-ranks a fraction of the whole depth; on data it orders poorly
    (32-d, where a blind 1/4 share lost 0.1 of recall) it keeps it deep. Either way the merged top 10 stays within
    0.02 of what the whole depth in every shard finds."""
    data = embedding_like(40_200, dim, seed=11, clusters=50, intrinsic=intrinsic)
    base, queries = data[:40_000], data[40_000:]
    gt = exact_neighbours(base, queries, 10, metric="ip")
    fitted = four_shards(dim, base)
    whole = four_shards(dim, base, refine_factor=index_params.DEFAULT_REFINE_FACTOR)
    assert all(part._params.refine_by_shards == () for part in whole)  # explicit: not fitted
    tables = [part._params.refine_by_shards for part in fitted]
    assert all(len(t) == len(refine_fit.SHARD_COUNTS) and list(t) == sorted(t, reverse=True) for t in tables), tables
    at_four, at_whole = merged_recall(fitted, queries, gt, 4), merged_recall(whole, queries, gt, 4)
    print(f"{dim}-d: fitted {tables}; merged recall@10 fitted {at_four:.3f}, whole depth {at_whole:.3f}")
    assert at_four >= at_whole - 0.02, (at_four, at_whole, tables)
    explain: dict = {}
    fitted[0].search(queries[:1], 10, explain=explain, shards=4)
    assert explain["refine_depth"] == 10 * tables[0][2] == 10 * explain["refine_factor"]
    assert explain["shards_searched"] == 4 and "refine depth fitted" in fitted[0].info().index_description
    if dim == 128:
        assert max(t[2] for t in tables) <= 12, tables  # well under the whole depth's 20


def test_a_fitted_depth_survives_a_snapshot() -> None:
    data = embedding_like(6_000, 64, seed=3, clusters=20, intrinsic=16)
    coll = collection(64, 3_000)
    coll.upsert([str(i) for i in range(len(data))], data)
    coll.maintain()
    table = coll._params.refine_by_shards
    assert table
    again = collection(64, 3_000)
    again.import_state(coll.export_state())
    assert again._params == coll._params


def test_the_depths_are_fitted_again_as_the_index_grows() -> None:
    """Trained on a few thousand items, the shard then absorbs as many again (short of a retrain's 4x): the next
    maintenance round refits the depths on the grown index (with its recall estimate), without a retrain."""
    data = embedding_like(8_000, 64, seed=4, clusters=20, intrinsic=16)
    coll = collection(64, 4_000)
    ids = [str(i) for i in range(len(data))]
    coll.upsert(ids[:4_000], data[:4_000])
    coll.maintain()
    trained, first = coll._retrain.trained_upto, coll._params
    assert first.refine_by_shards and coll._retrain.fit_size == 4_000
    coll.upsert(ids[4_000:], data[4_000:])
    coll.absorb()
    assert coll.pending_work() == "measure"  # twice the codes it was fitted on
    coll.maintain()
    assert coll.pending_work() is None and coll._retrain.fit_size == 8_000
    assert coll._retrain.trained_upto == trained and coll._params.nlist == first.nlist  # not retrained
    assert coll._params.refine_by_shards and coll.retrain_status().estimated_recall > 0.9


def test_the_shard_count_comes_from_shards_searched_or_an_older_coordinators_shards() -> None:
    from shardsearch.shard_server.queries import shards_reached as searched
    from shardsearch.v1 import shard_pb2

    assert searched(shard_pb2.ShardSearchRequest()) == 1
    assert searched(shard_pb2.ShardSearchRequest(shards_searched=4)) == 4
    assert searched(shard_pb2.ShardSearchRequest(shards=3)) == 3  # sent with --refine-share before shards_searched
    assert searched(shard_pb2.ShardSearchRequest(shards=3, shards_searched=8)) == 8


def test_a_recall_check_without_growth_keeps_the_depths_and_an_unfitted_snapshot_is_fitted_once() -> None:
    data = embedding_like(6_000, 64, seed=6, clusters=20, intrinsic=16)
    coll = collection(64, 3_000)
    coll.upsert([str(i) for i in range(len(data))], data)
    coll.maintain()
    fitted = coll._params
    assert fitted.refine_by_shards and coll.pending_work() is None
    coll.measure_recall()  # what RetrainStatus(measure=true) runs: a fresh sample, the same depths
    assert coll._params is fitted

    state = coll.export_state()
    del state["refine_by_shards"]  # a snapshot written before fitted depths existed
    older = collection(64, 3_000)
    older.import_state(state)
    assert older._params.refine_by_shards == () and older.pending_work() == "measure"
    older.maintain()
    assert older._params.refine_by_shards and older.pending_work() is None
