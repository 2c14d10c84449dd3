"""The re-ranking depth of a search that reaches several shards (`ann.depth`): each shard re-ranks its share of the
collection's k x refine_factor, and on real FAISS indexes the shares find what one index finds at the whole depth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from shardsearch import index_params
from shardsearch.shard_server import ann
from shardsearch.shard_server.index import Collection
from shardsearch.tools.datasets import embedding_like, exact_neighbours
from shardsearch.v1 import search_pb2
from tests.conftest import recall_at_10

DIM = 32


def test_each_shard_takes_its_share_of_the_depth_down_to_twice_k() -> None:
    chosen = index_params.choose(DIM, 20_000, search_pb2.IndexOptions())
    assert chosen.refine_factor == 20
    assert [ann.depth(chosen, 10, shards) for shards in (0, 1, 2, 4, 8, 16, 64)] == [200, 200, 100, 50, 25, 20, 20]
    assert ann.depth(chosen, 1, 3) == 7  # rounded up
    assert ann.depth(replace(chosen, refine_factor=1), 10, 4) == 10  # never below k x refine_factor's floor, nor above it
    assert ann.depth(replace(chosen, refine_factor=2), 10, 4) == 20


def collection(threshold: int) -> Collection:
    return Collection(search_pb2.Collection(
        name="t", dim=DIM, metric=search_pb2.METRIC_INNER_PRODUCT,
        index=search_pb2.IndexOptions(train_threshold=threshold)))


def test_four_shards_at_their_share_find_what_one_index_finds_at_the_whole_depth() -> None:
    data = embedding_like(40_200, DIM, seed=11, clusters=50, intrinsic=16)
    base, queries = data[:40_000], data[40_000:]
    gt = exact_neighbours(base, queries, 10, metric="ip")
    ids = np.array([str(i) for i in range(len(base))])

    whole = collection(threshold=5_000)
    whole.upsert(ids.tolist(), base)
    whole.maintain()
    assert whole.info().trained
    one = recall_at_10([[int(i) for i in whole.ids_for(row)] for row in whole.search(queries, 10).labels], gt)

    owner = np.arange(len(base)) % 4
    shards = []
    for s in range(4):
        part = collection(threshold=2_000)
        part.upsert(ids[owner == s].tolist(), base[owner == s])
        part.maintain()
        assert part.info().trained
        shards.append(part)

    def merged_recall(share: int) -> float:
        found, scores = [], []
        for part in shards:
            result = part.search(queries, 10, shards=share)
            found.append(np.array([[int(i) if i else -1 for i in part.ids_for(row)] for row in result.labels]))
            scores.append(np.where(result.labels >= 0, result.scores, -np.inf))
        merged = np.take_along_axis(np.concatenate(found, 1), np.argsort(-np.concatenate(scores, 1), 1)[:, :10], 1)
        return recall_at_10(merged.tolist(), gt)

    four, four_whole_depth = merged_recall(4), merged_recall(1)
    print(f"recall@10: one index {one:.3f}; 4 shards at their share {four:.3f}, at the whole depth each {four_whole_depth:.3f}")
    # at 32-d 4-bit PQ orders candidates poorly, so the share loses against the whole depth in each shard (hence
    # refine_share is opt-in), but stays near what one index over all the items finds at the whole depth
    assert four >= one - 0.05 and four_whole_depth >= 0.99, (four, four_whole_depth, one)

    explain: dict = {}
    shards[0].search(queries[:1], 10, explain=explain, shards=4)
    assert explain["path"] == "ivf" and explain["refine_depth"] == 50 and explain["shards_searched"] == 4
    explain = {}
    shards[0].search(queries[:1], 10, explain=explain)
    assert explain["refine_depth"] == 200 and explain["shards_searched"] == 1
