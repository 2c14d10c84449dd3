"""What the client sends and gets back, without protobuf by hand: filters, field values, results, and the requests
both clients build (chunked to fit the server's message limits). Re-exported by shardsearch.client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from shardsearch.v1 import search_pb2

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
UPSERT_BATCH = 1000
MAX_QUERIES_PER_CALL = 1000
MAX_HITS_PER_CALL = 1_000_000  # the server's limit on queries x k in one BatchSearch

FieldValue = Union[str, float, int, Sequence[str]]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    """Inner product (larger is better) or squared L2 distance (smaller is better), by the collection's metric."""
    payload: bytes = b""
    fields: dict[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    id: str
    vector: np.ndarray
    payload: bytes = b""
    fields: dict[str, FieldValue] = field(default_factory=dict)


def match(name: str, *values: str) -> search_pb2.Filter:
    """Field `name` (a keyword, or a keyword list) holds one of `values`."""
    return search_pb2.Filter(match=search_pb2.Match(field=name, values=list(values)))


def number_range(name: str, *, gt: float | None = None, gte: float | None = None, lt: float | None = None,
                 lte: float | None = None) -> search_pb2.Filter:
    """Number field `name` within the given bounds (each optional)."""
    bounds = {key: value for key, value in (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)) if value is not None}
    return search_pb2.Filter(range=search_pb2.Range(field=name, **bounds))


def all_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(all_of=search_pb2.Filters(filters=list(filters)))


def any_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(any_of=search_pb2.Filters(filters=list(filters)))


def none_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(none_of=search_pb2.Filters(filters=list(filters)))


def to_value(value: FieldValue) -> search_pb2.Value:
    if isinstance(value, bool):
        raise TypeError("a field value is a str, a number or a list of str, not a bool")
    if isinstance(value, str):
        return search_pb2.Value(keyword=value)
    if isinstance(value, (int, float)):
        return search_pb2.Value(number=float(value))
    return search_pb2.Value(keywords=search_pb2.Keywords(values=list(value)))


def from_value(value: search_pb2.Value) -> FieldValue:
    kind = value.WhichOneof("kind")
    if kind == "keyword":
        return value.keyword
    if kind == "number":
        return value.number
    return list(value.keywords.values)


def fields_of(values: Mapping[str, search_pb2.Value]) -> dict[str, FieldValue]:
    return {name: from_value(value) for name, value in values.items()}


def hits_of(response: search_pb2.SearchResponse) -> list[Hit]:
    return [Hit(h.id, h.score, h.payload, fields_of(h.fields)) for h in response.hits]


def matrix_of(vectors: Any) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype="<f4")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"vectors: expected one vector or a matrix, got shape {array.shape}")
    return array


METRICS = {"l2": search_pb2.METRIC_L2, "ip": search_pb2.METRIC_INNER_PRODUCT,
           "inner_product": search_pb2.METRIC_INNER_PRODUCT}


VECTOR_STORES = {"float32": search_pb2.VECTOR_STORE_FLOAT32, "float16": search_pb2.VECTOR_STORE_FLOAT16,
                 "sq8": search_pb2.VECTOR_STORE_SQ8}


def create_request(name: str, dim: int, metric: str, vector_store: str | None,
            index: Mapping[str, int]) -> search_pb2.CreateCollectionRequest:
    if metric not in METRICS:
        raise ValueError(f"metric: one of {', '.join(METRICS)}")
    options = search_pb2.IndexOptions()
    for option, value in index.items():
        if option == "vector_store" or option not in search_pb2.IndexOptions.DESCRIPTOR.fields_by_name:
            raise ValueError(f"{option}: not an index option")
        setattr(options, option, value)
    if vector_store is not None:
        if vector_store not in VECTOR_STORES:
            raise ValueError(f"vector_store: one of {', '.join(VECTOR_STORES)}")
        options.vector_store = VECTOR_STORES[vector_store]
    return search_pb2.CreateCollectionRequest(name=name, dim=dim, metric=METRICS[metric], index=options)


def upsert_requests(collection: str, ids: Sequence[str], vectors: Any, payloads: Sequence[bytes] | None,
             fields: Sequence[Mapping[str, FieldValue]] | None, batch: int) -> Iterator[search_pb2.UpsertRequest]:
    matrix = matrix_of(vectors)
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
    for name, given in (("payloads", payloads), ("fields", fields)):
        if given is not None and len(given) != len(ids):
            raise ValueError(f"{name}: {len(given)} for {len(ids)} ids")
    item_bytes = matrix.shape[1] * 4 + 300 + max((len(p) for p in payloads or ()), default=0) + 16_384 * bool(fields)
    step = max(1, min(batch, (MAX_MESSAGE_BYTES // 2) // item_bytes))  # ids <= 256 bytes, fields <= 16 KiB
    for lo in range(0, len(ids), step):
        items = []
        for i in range(lo, min(len(ids), lo + step)):
            item = search_pb2.Item(id=ids[i], vector_f32=matrix[i].tobytes())
            if payloads is not None:
                item.payload = payloads[i]
            if fields is not None:
                for key, value in fields[i].items():
                    item.fields[key].CopyFrom(to_value(value))
            items.append(item)
        yield search_pb2.UpsertRequest(collection=collection, items=items)


def search_options(k: int, filter: search_pb2.Filter | None, nprobe: int, include_payload: bool,
                    skip_cache: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"k": k, "nprobe": nprobe, "include_payload": include_payload, "skip_cache": skip_cache}
    if filter is not None:
        options["filter"] = filter
    return options


def batch_requests(collection: str, queries: np.ndarray, options: dict[str, Any]) -> Iterator[search_pb2.BatchSearchRequest]:
    step = max(1, min(MAX_QUERIES_PER_CALL, MAX_HITS_PER_CALL // max(1, options["k"])))
    for lo in range(0, queries.shape[0], step):
        yield search_pb2.BatchSearchRequest(collection=collection, vectors_f32=queries[lo : lo + step].tobytes(),
                                            **options)


def items_of(response: search_pb2.GetResponse) -> list[Item]:
    out = []
    for item in response.items:
        vector = np.frombuffer(item.vector_f32, dtype="<f4") if item.vector_f32 else np.asarray(item.vector, "<f4")
        out.append(Item(item.id, vector, item.payload, fields_of(item.fields)))
    return out

