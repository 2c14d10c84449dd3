"""Request checks shared by the coordinator (first line) and the shards (defence in depth).

Every failure is InvalidArgument with a message that names the field, so a caller can act on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shard_server import params as index_params
from shardsearch.errors import InvalidArgument
from shardsearch.v1 import search_pb2

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
METRICS = (search_pb2.METRIC_INNER_PRODUCT, search_pb2.METRIC_L2)


@dataclass(frozen=True)
class Limits:
    max_dim: int = 4096
    max_k: int = 1000
    max_id_bytes: int = 256
    max_payload_bytes: int = 65_536
    max_items: int = 10_000
    max_queries: int = 10_000
    max_hits: int = 1_000_000
    """Queries x k per BatchSearch: keeps the answers (~13 bytes a hit) far below the 64 MiB message limit.
    10000 queries at k 1000 would be 10M hits: every shard would build ~80 MB it could not send."""
    max_nprobe: int = 65_536


DEFAULT_LIMITS = Limits()


def check_collection(spec: search_pb2.Collection, limits: Limits = DEFAULT_LIMITS) -> None:
    if not NAME_RE.match(spec.name):
        raise InvalidArgument(f"name: {spec.name!r} must be 1-128 characters from [A-Za-z0-9_.-]")
    if not 1 <= spec.dim <= limits.max_dim:
        raise InvalidArgument(f"dim: {spec.dim} must be between 1 and {limits.max_dim}")
    if spec.metric not in METRICS:
        raise InvalidArgument("metric: must be METRIC_INNER_PRODUCT or METRIC_L2")
    try:
        index_params.check_options(spec.dim, spec.index)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def check_ids(ids: list[str], field: str, limits: Limits = DEFAULT_LIMITS, unique: bool = False) -> None:
    if not ids:
        raise InvalidArgument(f"{field}: at least one id is required")
    if len(ids) > limits.max_items:
        raise InvalidArgument(f"{field}: {len(ids)} ids exceeds the maximum of {limits.max_items} per request")
    for i, item_id in enumerate(ids):
        if not item_id:
            raise InvalidArgument(f"{field}[{i}]: id must not be empty")
        if len(item_id) * 4 > limits.max_id_bytes and len(item_id.encode()) > limits.max_id_bytes:
            raise InvalidArgument(f"{field}[{i}]: id is longer than {limits.max_id_bytes} bytes")
    if unique and len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i, item_id in enumerate(ids):
            if item_id in seen:
                raise InvalidArgument(f"{field}[{i}]: duplicate id {item_id!r} in one request")
            seen.add(item_id)


def check_payloads(payloads: list[bytes], field: str, limits: Limits = DEFAULT_LIMITS) -> None:
    for i, payload in enumerate(payloads):
        if len(payload) > limits.max_payload_bytes:
            raise InvalidArgument(f"{field}[{i}].payload: {len(payload)} bytes exceeds {limits.max_payload_bytes}")


def check_search(k: int, nprobe: int, limits: Limits = DEFAULT_LIMITS) -> None:
    if not 1 <= k <= limits.max_k:
        raise InvalidArgument(f"k: {k} must be between 1 and {limits.max_k}")
    if nprobe > limits.max_nprobe:
        raise InvalidArgument(f"nprobe: {nprobe} exceeds {limits.max_nprobe}")


def check_query_count(n: int, limits: Limits = DEFAULT_LIMITS, k: int = 0) -> None:
    """`k` (the coordinator passes it) also bounds queries x k; shards skip that: they get merged batches."""
    if n == 0:
        raise InvalidArgument("vectors: at least one query vector is required")
    if n > limits.max_queries:
        raise InvalidArgument(f"vectors: {n} queries exceeds the maximum of {limits.max_queries} per request")
    if n * k > limits.max_hits:
        raise InvalidArgument(
            f"vectors, k: {n} queries x k {k} = {n * k} results exceeds the maximum of {limits.max_hits} per request "
            f"(send at most {limits.max_hits // k} queries per call at this k)"
        )
