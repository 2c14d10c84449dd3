"""A shard's search batch: one FAISS call for every request in it, split back into one answer each."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardsearch import codec, tracing
from shardsearch.errors import AnswerTooLarge
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import search_pb2, shard_pb2

MAX_ANSWER_PAYLOAD_BYTES = 32 * 1024 * 1024
"""Payload and field bytes in one shard answer: half the gRPC message limit, checked before the answer is built."""


def search_batch(
    coll: Collection, items: list[tuple[np.ndarray, int, Any]], nprobe: int, include_payload: bool,
    include_fields: bool = False, wait: bool = True, explain: dict[str, Any] | None = None,
    timing: list[int] | None = None, shards: int = 1,
) -> list[shard_pb2.ShardSearchResponse] | None:
    """One FAISS call for every request in the batch, split back into one response each (in the executor; with
    `wait` False on the event loop, unfiltered: None if the collection's lock is held).

    Requests may ask for different k: the batch searches the largest, and each keeps its own top k (results are
    sorted, so a prefix of the top-K is the top-k). `timing`, if given, receives the FAISS call's start and end
    (epoch ns, for its span). `shards`: how many shards the searches reached (their share of the re-ranking).
    """
    started_ns = tracing.now_ns() if timing is not None else 0
    queries = items[0][0] if len(items) == 1 else np.concatenate([q for q, _, _ in items])
    k_max = max(k for _, k, _ in items)
    if wait:
        result = coll.search(queries, k_max, nprobe, items[0][2], explain, shards)  # one filter per batch (in its key)
    else:
        found = coll.try_search(queries, k_max, nprobe, shards)
        if found is None:
            return None
        result = found
    if timing is not None:
        timing[:] = (started_ns, tracing.now_ns())
    responses: list[Any] = []
    offset = 0
    for rows, k, _ in items:
        n = rows.shape[0]
        labels = result.labels[offset : offset + n, :k]
        offset += n
        payloads = coll.payloads_for(labels, result.view) if include_payload else []
        fields = coll.fields_for(labels, result.view) if include_fields else []
        size = sum(map(len, payloads)) + sum(map(len, fields))
        if size > MAX_ANSWER_PAYLOAD_BYTES:  # refused before the message is built: memory stays bounded
            responses.append(AnswerTooLarge(
                f"answer larger than max: its payloads and fields are {size} bytes for {n} x {k} hits, over the "
                f"limit of {MAX_ANSWER_PAYLOAD_BYTES} bytes per shard answer (max_answer_payload_bytes)"
            ))
            continue
        responses.append(shard_pb2.ShardSearchResponse(
            n=n,
            k=k,
            ids=coll.ids_for(labels, result.view),
            scores_f32=codec.pack(result.scores[offset - n : offset, :k]),
            payloads=payloads,
            fields=[search_pb2.Fields.FromString(blob) for blob in fields],
        ))
    return responses
