"""Diversity over merged hits, the fields' way from the shards' answers into hits, and the keys that keep
filtered searches apart in the batcher and the result cache."""

from __future__ import annotations

import numpy as np
import pytest

from shardsearch import codec
from shardsearch.coordinator.cache import entry_keys
from shardsearch.coordinator.combine import fuse_rrf
from shardsearch.coordinator.diversity import depth, diversify, strip_fields
from shardsearch.coordinator.postprocess import finish
from shardsearch.coordinator.search import assemble
from shardsearch.v1 import search_pb2, shard_pb2

V = search_pb2.Value


def response(*hits: tuple[str, dict[str, V]]) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(hits=[
        search_pb2.Hit(id=item_id, score=float(rank), fields=values) for rank, (item_id, values) in enumerate(hits)
    ])


def cat(value: str) -> dict[str, V]:
    return {"category": V(keyword=value)}


def ids(r: search_pb2.SearchResponse) -> list[str]:
    return [hit.id for hit in r.hits]


def by(field: str, limit: int) -> search_pb2.Diversity:
    return search_pb2.Diversity(field=field, max_per_value=limit)


def test_depth_is_four_k_or_twenty_more_capped_at_max_k() -> None:
    assert [depth(k, 1000) for k in (1, 5, 6, 7, 10, 300)] == [21, 25, 26, 28, 40, 1000]
    assert depth(1000, 1000) == 1000


def test_at_most_n_per_keyword_best_first_and_stops_at_k() -> None:
    r = response(("a1", cat("a")), ("a2", cat("a")), ("b1", cat("b")), ("a3", cat("a")), ("c1", cat("c")),
                 ("b2", cat("b")), ("b3", cat("b")), ("c2", cat("c")))
    diversify(r, by("category", 2), 10)
    assert ids(r) == ["a1", "a2", "b1", "c1", "b2", "c2"]
    r = response(("a1", cat("a")), ("a2", cat("a")), ("b1", cat("b")), ("c1", cat("c")), ("d1", cat("d")))
    diversify(r, by("category", 1), 3)
    assert ids(r) == ["a1", "b1", "c1"]
    assert [h.score for h in r.hits] == [0.0, 2.0, 3.0]  # scores and fields stay with their hits
    assert r.hits[1].fields["category"].keyword == "b"


def test_hits_without_the_field_are_not_limited() -> None:
    r = response(("x1", {}), ("a1", cat("a")), ("x2", {"other": V(keyword="a")}), ("a2", cat("a")), ("x3", {}))
    diversify(r, by("category", 1), 10)
    assert ids(r) == ["x1", "a1", "x2", "x3"]


def test_numbers_and_keywords_are_distinct_values() -> None:
    r = response(("n1", {"f": V(number=3)}), ("k1", {"f": V(keyword="3")}), ("n2", {"f": V(number=3.0)}),
                 ("n3", {"f": V(number=-0.0)}), ("n4", {"f": V(number=0.0)}))
    diversify(r, by("f", 1), 10)
    assert ids(r) == ["n1", "k1", "n3"]  # -0.0 == 0.0


def test_a_keyword_list_counts_against_each_of_its_values() -> None:
    def tags(*values: str) -> dict[str, V]:
        return {"tags": V(keywords=search_pb2.Keywords(values=values))}

    r = response(("h1", tags("red", "blue")), ("h2", tags("red")), ("h3", tags("green", "blue")),
                 ("h4", tags("green")), ("h5", tags("yellow", "yellow")), ("h6", tags("yellow")), ("h7", tags()))
    diversify(r, by("tags", 1), 10)
    # h2 shares red with h1, h3 shares blue with h1; h5's duplicate yellow counts once; an empty list is not limited
    assert ids(r) == ["h1", "h4", "h5", "h7"]
    r = response(("h1", tags("red", "blue")), ("h2", tags("red")), ("h3", tags("red", "green")))
    diversify(r, by("tags", 2), 10)
    assert ids(r) == ["h1", "h2"]  # red is full after two; h3 is refused although green is new


def test_fewer_than_k_when_too_few_distinct_values() -> None:
    r = response(*[(f"a{i}", cat("a")) for i in range(30)])
    diversify(r, by("category", 3), 10)
    assert ids(r) == ["a0", "a1", "a2"]


def test_diversify_equals_a_greedy_walk_on_random_lists() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n, k, limit = int(rng.integers(1, 80)), int(rng.integers(1, 20)), int(rng.integers(1, 4))
        cats = rng.integers(0, 6, n)
        r = response(*[(f"h{i}", cat(str(c))) for i, c in enumerate(cats)])
        diversify(r, by("category", limit), k)
        expected, seen = [], {}  # type: ignore[var-annotated]
        for i, c in enumerate(cats):
            if len(expected) < k and seen.get(c, 0) < limit:
                expected.append(f"h{i}")
                seen[c] = seen.get(c, 0) + 1
        assert ids(r) == expected


class Request:
    """The few fields of a search request that finish() reads."""

    def __init__(self, include_payload: bool = False, diversity: search_pb2.Diversity | None = None,
                 score_threshold: float | None = None) -> None:
        self.include_payload = include_payload
        self.diversity = diversity
        self.score_threshold = score_threshold

    def HasField(self, name: str) -> bool:  # noqa: N802 (the protobuf spelling)
        return getattr(self, name) is not None


def test_finish_applies_threshold_then_diversity_then_drops_fields_not_asked_for() -> None:
    r = response(("a1", cat("a")), ("a2", cat("a")), ("b1", cat("b")), ("c1", cat("c")), ("d1", cat("d")))
    finish(r, Request(diversity=by("category", 1), score_threshold=3.0), search_pb2.METRIC_L2, 10)
    assert ids(r) == ["a1", "b1", "c1"]  # d1 (distance 4) is past the threshold
    assert all(not hit.fields for hit in r.hits)
    r = response(("a1", cat("a")), ("a2", cat("a")), ("b1", cat("b")))
    finish(r, Request(include_payload=True, diversity=by("category", 1)), search_pb2.METRIC_L2, 10)
    assert ids(r) == ["a1", "b1"] and r.hits[1].fields["category"].keyword == "b"
    r = response(("a1", cat("a")), ("a2", cat("a")))
    finish(r, Request(include_payload=True), search_pb2.METRIC_L2, 10)
    assert ids(r) == ["a1", "a2"] and r.hits[1].fields["category"].keyword == "a"


def test_strip_fields_keeps_everything_else() -> None:
    r = search_pb2.SearchResponse(hits=[search_pb2.Hit(id="a", score=1.5, payload=b"p", fields=cat("x"))])
    strip_fields(r)
    assert r.hits[0] == search_pb2.Hit(id="a", score=1.5, payload=b"p")


def test_rrf_fusion_carries_each_hits_fields() -> None:
    one = response(("a", cat("x")), ("b", cat("y")))
    two = response(("b", cat("y")), ("c", cat("z")))
    fused = fuse_rrf([one, two], np.array([1.0, 1.0]), 3, set())
    assert ids(fused) == ["b", "a", "c"]
    assert [h.fields["category"].keyword for h in fused.hits] == ["y", "x", "z"]


def shard_answer(rows: list[list[tuple[str, float, dict[str, V] | None]]], k: int,
                 with_fields: bool = True) -> shard_pb2.ShardSearchResponse:
    answer = shard_pb2.ShardSearchResponse(n=len(rows), k=k)
    scores = []
    for row in rows:
        padded = row + [("", 0.0, None)] * (k - len(row))
        answer.ids.extend(item_id for item_id, _, _ in padded)
        scores.extend(score for _, score, _ in padded)
        if with_fields:
            answer.fields.extend(search_pb2.Fields(values=values or {}) for _, _, values in padded)
    answer.scores_f32 = codec.pack(np.array(scores, dtype=np.float32))
    return answer


def test_assemble_puts_each_hits_fields_on_it_across_shards() -> None:
    a = shard_answer([[("a1", 0.1, cat("a")), ("a2", 0.5, None)], [("a3", 0.2, cat("c"))]], k=2)
    b = shard_answer([[("b1", 0.3, cat("b"))], [("b2", 0.1, {"n": V(number=2)}), ("b3", 0.9, None)]], k=2)
    results = assemble([a, b], 3, False, False, [], include_fields=True)
    assert [ids(r) for r in results] == [["a1", "b1", "a2"], ["b2", "a3", "b3"]]
    assert [dict(h.fields) for h in results[0].hits] == [cat("a"), cat("b"), {}]
    assert [dict(h.fields) for h in results[1].hits] == [{"n": V(number=2)}, cat("c"), {}]
    plain = assemble([a, b], 3, False, False, [])
    assert all(not h.fields for r in plain for h in r.hits)


def test_assemble_treats_a_shard_without_fields_as_hits_without_fields() -> None:
    a = shard_answer([[("a1", 0.1, cat("a"))]], k=1)
    b = shard_answer([[("b1", 0.05, None)]], k=1, with_fields=False)
    (result,) = assemble([a, b], 2, False, False, [], include_fields=True)
    assert ids(result) == ["b1", "a1"] and not result.hits[0].fields and result.hits[1].fields == cat("a")


def test_cache_keys_differ_by_filter_and_by_fields() -> None:
    q = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    flt = search_pb2.Filter(match=search_pb2.Match(field="c", values=["a"])).SerializeToString(deterministic=True)
    other = search_pb2.Filter(match=search_pb2.Match(field="c", values=["b"])).SerializeToString(deterministic=True)
    keys = {
        entry_keys(8, 0, 10, 0, False, q)[0], entry_keys(8, 0, 10, 0, False, q, flt)[0],
        entry_keys(8, 0, 10, 0, False, q, other)[0], entry_keys(8, 0, 10, 0, False, q, flt, True)[0],
        entry_keys(8, 0, 10, 0, False, q, b"", True)[0],
    }
    assert len(keys) == 5
    assert entry_keys(8, 0, 10, 0, False, q, flt) == entry_keys(8, 0, 10, 0, False, q.copy(), bytes(flt))


@pytest.mark.parametrize("k", [1, 10])
def test_diversify_never_returns_more_than_k(k: int) -> None:
    r = response(*[(f"h{i}", cat(str(i))) for i in range(50)])
    diversify(r, by("category", 1), k)
    assert len(r.hits) == k
