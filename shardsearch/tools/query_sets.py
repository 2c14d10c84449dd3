"""Labelled query sets for `shardsearch eval`: JSON (a list of objects) or JSONL (one object a line), each a query
(a vector, an item id or a text) with the ids relevant to it. Errors name the file and the line or item.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shardsearch import codec

QUERY_FIELDS = ("query_id", "relevant", "relevant_ids", "vector", "id", "text")


class QuerySetError(ValueError):
    """A query file that cannot be used; the message names the file and the line (JSONL) or item (JSON list)."""


@dataclass(frozen=True)
class Query:
    """One labelled query: `kind` is vector (`value` packed float32), id (an item id) or text."""

    query_id: str
    relevant: frozenset[str]
    kind: str
    value: bytes | str


def load_queries(path: str | Path) -> list[Query]:
    """Reads a query set: a JSON list of objects, or JSONL (one object a line; blank lines ignored).

    Each object: `relevant` (or `relevant_ids`): a list of ids (strings, or integers taken as their decimal string),
    may be empty; exactly one of `vector` (a list of numbers), `id` (an item id, searched with SearchById) or `text`;
    optionally `query_id` (default "line N" / "item N"). Any other field is an error, so a typo is not ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuerySetError(f"cannot read query file {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuerySetError(f"{path}: not valid JSON: {exc}") from None
        numbered = [(f"item {i}", obj) for i, obj in enumerate(items, 1)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    reason = f"not valid JSON ({exc.msg}, column {exc.colno})"
                    raise QuerySetError(f"{path}: line {number}: {reason}") from None
    if not numbered:
        raise QuerySetError(f"{path}: no queries")
    queries, seen = [], set()
    for where, obj in numbered:
        try:
            query = parse_query(obj, where)
        except QuerySetError as exc:
            raise QuerySetError(f"{path}: {where}: {exc}") from None
        if query.query_id in seen:
            raise QuerySetError(f"{path}: {where}: query_id {query.query_id!r} is used twice")
        seen.add(query.query_id)
        queries.append(query)
    return queries


def parse_query(obj: Any, default_id: str) -> Query:
    """One query object, checked; errors say what is wrong without the file position (the caller adds it)."""
    if not isinstance(obj, dict):
        raise QuerySetError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(QUERY_FIELDS))
    if unknown:
        raise QuerySetError(f"unknown field(s) {', '.join(map(repr, unknown))} (expected {', '.join(QUERY_FIELDS)})")
    if "relevant" in obj and "relevant_ids" in obj:
        raise QuerySetError("give 'relevant' or 'relevant_ids', not both")
    relevant = obj.get("relevant", obj.get("relevant_ids"))
    if not isinstance(relevant, list):
        raise QuerySetError("'relevant' must be a list of ids (it may be empty)")
    kinds = [name for name in ("vector", "id", "text") if name in obj]
    if len(kinds) != 1:
        raise QuerySetError(f"needs exactly one of 'vector', 'id' or 'text', got {' and '.join(kinds) or 'none'}")
    kind = kinds[0]
    query_id = _item_id(obj["query_id"], "query_id") if "query_id" in obj else default_id
    value: bytes | str
    if kind == "vector":
        value = _vector(obj["vector"])
    elif kind == "id":
        value = _item_id(obj["id"], "id")
    else:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise QuerySetError("'text' must be a non-empty string")
        value = obj["text"]
    return Query(query_id, frozenset(_item_id(r, "relevant") for r in relevant), kind, value)


def _item_id(value: Any, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise QuerySetError(f"{name!r}: ids are non-empty strings or integers, got {value!r}")
    return value


def _vector(value: Any) -> bytes:
    if not isinstance(value, list) or not value or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise QuerySetError("'vector' must be a non-empty list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise QuerySetError("'vector' contains NaN or Inf")
    return codec.pack(np.asarray(value, dtype=np.float32))
