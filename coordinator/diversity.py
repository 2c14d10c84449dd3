"""Per-field diversity ("at most 3 hits per category"), applied to merged results so it holds across shards.

The shards know nothing of it: the coordinator searches deeper (`depth`), with each hit's fields, then walks the hits
best first and keeps a hit unless one of its values of the field has already been kept `max_per_value` times.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable

from shardsearch.v1 import search_pb2

MIN_EXTRA = 20  # a diverse search looks at least this many hits past k, else 4 x k


def depth(k: int, max_k: int) -> int:
    """Hits to search for so that a diversity walk usually still finds k: min(max_k, max(4k, k + 20))."""
    return min(max_k, max(4 * k, k + MIN_EXTRA))


def value_keys(value: search_pb2.Value) -> tuple[Hashable, ...]:
    """The values a hit counts against: its keyword, its number, or each distinct keyword of its list.
    Keywords and numbers are kept apart ("3" is not 3)."""
    kind = value.WhichOneof("kind")
    if kind == "keyword":
        return (("k", value.keyword),)
    if kind == "number":
        return (("n", value.number),)
    if kind == "keywords":
        return tuple(("k", keyword) for keyword in dict.fromkeys(value.keywords.values))
    return ()


def diversify(response: search_pb2.SearchResponse, diversity: search_pb2.Diversity, k: int) -> None:
    """Keeps, best first, at most k hits of which at most max_per_value share a value of the field; hits without
    the field are not limited. Needs the hits' fields (the search ran with include_fields)."""
    field, limit = diversity.field, diversity.max_per_value
    seen: Counter[Hashable] = Counter()
    kept = []
    for hit in response.hits:
        if len(kept) == k:
            break
        keys = value_keys(hit.fields[field]) if field in hit.fields else ()
        if any(seen[key] >= limit for key in keys):
            continue
        seen.update(keys)
        kept.append(hit)
    if len(kept) != len(response.hits):
        del response.hits[:]
        response.hits.extend(kept)


def strip_fields(response: search_pb2.SearchResponse) -> None:
    """Drops the hits' fields (fetched for diversity only, not asked for with include_payload)."""
    for hit in response.hits:
        hit.ClearField("fields")
