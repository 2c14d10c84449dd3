"""What follows the merge of a search's hits: items left out, the score threshold, diversity."""

from __future__ import annotations

from typing import Any, Sequence

from shardsearch.coordinator.diversity import diversify, strip_fields
from shardsearch.v1 import search_pb2


def leave_out(response: search_pb2.SearchResponse, ids: set[str], k: int) -> None:
    """Drops the hits on `ids` (the items a query was made from) and keeps the best k of the rest."""
    kept = [hit for hit in response.hits if hit.id not in ids][:k]
    del response.hits[:]
    response.hits.extend(kept)


def finish(response: search_pb2.SearchResponse, request: Any, metric: int, k: int) -> None:
    """What follows the merge, in this order: the score threshold, then diversity (down to k hits), then the fields
    fetched only for diversity are dropped (kept with include_payload)."""
    if request.HasField("score_threshold"):
        apply_threshold(response, request.score_threshold, metric)
    if request.HasField("diversity"):
        diversify(response, request.diversity, k)
        if not request.include_payload:
            strip_fields(response)


def finish_all(responses: Sequence[search_pb2.SearchResponse], request: Any, metric: int, k: int) -> None:
    """finish() for each query of a BatchSearch (runs in the executor)."""
    for response in responses:
        finish(response, request, metric, k)


def apply_threshold(response: search_pb2.SearchResponse, threshold: float, metric: int) -> None:
    """Drops the hits worse than `threshold` (scores below it for inner product, distances above it for L2); hits
    are best first, so that is a tail."""
    higher_is_better = metric == search_pb2.METRIC_INNER_PRODUCT
    hits = response.hits
    for i, hit in enumerate(hits):
        if hit.score < threshold if higher_is_better else hit.score > threshold:
            del hits[i:]
            return

