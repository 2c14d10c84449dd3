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


def merge(parts: Sequence[ShardHits], k: int, higher_is_better: bool) -> Merged:
    """Best k per row over all shards; ties keep shard order (stable sort). Fields follow their hits when any shard
    sent them (a shard that sent none counts as hits without fields)."""
    ids = np.concatenate([p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    key = -scores if higher_is_better else scores.copy()
    key[ids == ""] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
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
