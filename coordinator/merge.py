"""Top-k merge of per-shard (n x k) results with numpy: no Python loop over candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ShardHits:
    """One shard's answer: n x k ids ("" = no hit), scores, and optional payloads and fields (n x k, or None)."""

    ids: np.ndarray  # object array of str, n x k
    scores: np.ndarray  # float32, n x k
    payloads: np.ndarray | None = None  # object array of bytes, n x k
    fields: np.ndarray | None = None  # object array of search_pb2.Fields (or None: no fields), n x k


@dataclass(frozen=True)
class Merged:
    ids: np.ndarray  # n x k, "" where fewer than k hits exist
    scores: np.ndarray
    payloads: np.ndarray | None
    fields: np.ndarray | None


def merge(parts: Sequence[ShardHits], k: int, higher_is_better: bool, dedupe: bool = False) -> Merged:
    """Best k per row over all shards; ties keep shard order (stable sort). Fields follow their hits when any shard
    sent them (a shard that sent none counts as hits without fields).

    With `dedupe` (while shards are moving, an id may be on two shards) each id is kept once, at its best score.
    Each shard's top k holds every hit of its own among the overall top k, so the k best distinct ids are still
    among the candidates."""
    if dedupe:
        parts = [*parts, _nothing(parts[0].ids.shape[0], parts)]
    ids = np.concatenate([p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    key = -scores if higher_is_better else scores.copy()
    key[ids == ""] = np.inf
    order = np.argsort(key, axis=1, kind="stable")
    order = _first_of_each(ids, order, k) if dedupe else order[:, :k]
    payloads = None
    if all(p.payloads is not None for p in parts) and parts:
        payloads = np.take_along_axis(np.concatenate([p.payloads for p in parts], axis=1), order, axis=1)
    fields = None
    if any(p.fields is not None for p in parts):
        blocks = [p.fields if p.fields is not None else np.full(p.ids.shape, None, dtype=object) for p in parts]
        fields = np.take_along_axis(np.concatenate(blocks, axis=1), order, axis=1)
    return Merged(
        np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1), payloads, fields
    )


def _nothing(n: int, parts: Sequence[ShardHits]) -> ShardHits:
    """One column of "no hit" (the last column after concatenation): what short rows are padded with."""
    return ShardHits(
        np.full((n, 1), "", dtype=object), np.zeros((n, 1), dtype=np.float32),
        np.full((n, 1), b"", dtype=object) if all(p.payloads is not None for p in parts) else None,
        np.full((n, 1), None, dtype=object) if any(p.fields is not None for p in parts) else None,
    )


def _first_of_each(ids: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k positions of `order` holding distinct ids, padded with the last column (no hit)."""
    pad = ids.shape[1] - 1
    chosen = np.full((ids.shape[0], k), pad, dtype=np.int64)
    for row in range(ids.shape[0]):
        seen: set[str] = set()
        kept = 0
        row_ids = ids[row]
        for j in order[row].tolist():
            item_id = row_ids[j]
            if item_id == "":
                break  # no-hit entries sort last
            if item_id in seen:
                continue
            seen.add(item_id)
            chosen[row, kept] = j
            kept += 1
            if kept == k:
                break
    return chosen
