import numpy as np

from shardsearch.coordinator.merge import ShardHits, merge


def hits(ids: list[list[str]], scores: list[list[float]]) -> ShardHits:
    return ShardHits(np.array(ids, dtype=object), np.array(scores, dtype=np.float32))


def test_l2_keeps_the_smallest_distances_across_shards() -> None:
    a = hits([["a1", "a2"], ["a3", ""]], [[0.1, 0.5], [0.2, 0.0]])
    b = hits([["b1", "b2"], ["b3", "b4"]], [[0.3, 0.4], [0.1, 0.9]])
    merged = merge([a, b], 3, higher_is_better=False)
    assert merged.ids.tolist() == [["a1", "b1", "b2"], ["b3", "a3", "b4"]]
    assert np.allclose(merged.scores[0], [0.1, 0.3, 0.4])


def test_inner_product_keeps_the_largest_scores() -> None:
    a = hits([["a1", "a2"]], [[0.9, 0.2]])
    b = hits([["b1", "b2"]], [[0.95, 0.1]])
    assert merge([a, b], 2, higher_is_better=True).ids.tolist() == [["b1", "a1"]]


def test_missing_hits_sort_last_even_with_zero_scores() -> None:
    a = hits([["", ""]], [[0.0, 0.0]])
    b = hits([["b1", ""]], [[5.0, 0.0]])
    assert merge([a, b], 3, higher_is_better=False).ids.tolist() == [["b1", "", ""]]


def test_payloads_follow_their_hits() -> None:
    a = ShardHits(np.array([["a"]], dtype=object), np.array([[2.0]], np.float32), np.array([[b"pa"]], dtype=object))
    b = ShardHits(np.array([["b"]], dtype=object), np.array([[1.0]], np.float32), np.array([[b"pb"]], dtype=object))
    merged = merge([a, b], 2, higher_is_better=False)
    assert merged.payloads is not None and merged.payloads.tolist() == [[b"pb", b"pa"]]
