"""Request checks shared by the coordinator (first line) and the shards (defence in depth).

Every failure is InvalidArgument with a message that names the field, so a caller can act on it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from shardsearch import index_params
from shardsearch.errors import InvalidArgument
from shardsearch.v1 import search_pb2

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # fullmatch: "$" would let a trailing newline through
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
    max_fields: int = 64
    """Structured fields per item; names, keywords and lists are bounded below, the whole by max_fields_bytes."""
    max_field_name_bytes: int = 64
    max_keyword_bytes: int = 256
    max_keywords: int = 256
    """Keywords in one keyword-list value."""
    max_fields_bytes: int = 16_384
    """An item's fields serialised (a search_pb2.Fields message)."""
    max_filter_conditions: int = 64
    """Match and Range conditions in one filter, however nested."""
    max_filter_depth: int = 8
    """all_of / any_of / none_of levels in one filter."""
    max_match_values: int = 1024


DEFAULT_LIMITS = Limits()


def check_collection(spec: search_pb2.Collection, limits: Limits = DEFAULT_LIMITS) -> None:
    if not NAME_RE.fullmatch(spec.name):
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


def _name(name: str) -> str:
    """A field name as it appears in a message, shortened so an over-long one does not flood the error."""
    return repr(name) if len(name) <= 70 else repr(name[:64] + "...")


def _check_name(name: str, path: str, limits: Limits) -> None:
    if not name:
        raise InvalidArgument(f"{path}: a field name must not be empty")
    if len(name) * 4 > limits.max_field_name_bytes and len(name.encode()) > limits.max_field_name_bytes:
        raise InvalidArgument(f"{path}: field name {_name(name)} is longer than {limits.max_field_name_bytes} bytes")


def _check_keyword(keyword: str, path: str, limits: Limits) -> None:
    if not keyword:
        raise InvalidArgument(f"{path}: a keyword must not be empty")
    if len(keyword) * 4 > limits.max_keyword_bytes and len(keyword.encode()) > limits.max_keyword_bytes:
        raise InvalidArgument(f"{path}: keyword is longer than {limits.max_keyword_bytes} bytes")


def _check_number(number: float, path: str) -> None:
    if not math.isfinite(number):
        raise InvalidArgument(f"{path}: {number} is not a finite number")


def check_fields(fields: search_pb2.Fields, path: str = "fields", limits: Limits = DEFAULT_LIMITS) -> None:
    """One item's structured fields; `path` names them in errors, e.g. "items[3].fields"."""
    values: Mapping[str, search_pb2.Value] = fields.values
    if len(values) > limits.max_fields:
        raise InvalidArgument(f"{path}: {len(values)} fields exceeds the maximum of {limits.max_fields} per item")
    for name in sorted(values):
        _check_name(name, path, limits)
        where = f"{path}[{_name(name)}]"
        value = values[name]
        kind = value.WhichOneof("kind")
        if kind == "keyword":
            _check_keyword(value.keyword, where, limits)
        elif kind == "number":
            _check_number(value.number, where)
        elif kind == "keywords":
            keywords = value.keywords.values
            if len(keywords) > limits.max_keywords:
                raise InvalidArgument(f"{where}: {len(keywords)} keywords exceeds the maximum of {limits.max_keywords}")
            for i, keyword in enumerate(keywords):
                _check_keyword(keyword, f"{where}.keywords[{i}]", limits)
        else:
            raise InvalidArgument(f"{where}: set keyword, number or keywords")
    size = fields.ByteSize()
    if size > limits.max_fields_bytes:
        raise InvalidArgument(f"{path}: {size} bytes serialised exceeds {limits.max_fields_bytes}")


def check_filter(flt: search_pb2.Filter, path: str = "filter", limits: Limits = DEFAULT_LIMITS) -> None:
    """A whole filter: every condition well formed, at most max_filter_conditions of them, nested at most
    max_filter_depth combinators deep. Errors name the condition, e.g. "filter.all_of[2].range"."""
    _check_filter(flt, path, limits, [0], 0)


def _check_filter(flt: search_pb2.Filter, path: str, limits: Limits, count: list[int], depth: int) -> None:
    kind = flt.WhichOneof("kind")
    if kind in ("match", "range"):
        count[0] += 1
        if count[0] > limits.max_filter_conditions:
            raise InvalidArgument(
                f"{path}: the filter has more than {limits.max_filter_conditions} match and range conditions"
            )
        if kind == "match":
            _check_match(flt.match, f"{path}.match", limits)
        else:
            _check_range(flt.range, f"{path}.range", limits)
    elif kind in ("all_of", "any_of", "none_of"):
        where = f"{path}.{kind}"
        if depth >= limits.max_filter_depth:
            raise InvalidArgument(f"{where}: filters are nested more than {limits.max_filter_depth} deep")
        children = getattr(flt, kind).filters
        if not children:
            raise InvalidArgument(f"{where}: give at least one filter")
        for i, child in enumerate(children):
            _check_filter(child, f"{where}[{i}]", limits, count, depth + 1)
    else:
        raise InvalidArgument(f"{path}: set one of match, range, all_of, any_of or none_of")


def _check_match(match: search_pb2.Match, path: str, limits: Limits) -> None:
    _check_name(match.field, f"{path}.field", limits)
    values = match.values
    if not 1 <= len(values) <= limits.max_match_values:
        raise InvalidArgument(f"{path}.values: {len(values)} values; give 1 to {limits.max_match_values}")
    for i, value in enumerate(values):
        _check_keyword(value, f"{path}.values[{i}]", limits)


def _check_range(rng: search_pb2.Range, path: str, limits: Limits) -> None:
    _check_name(rng.field, f"{path}.field", limits)
    bounds = [name for name in ("gt", "gte", "lt", "lte") if rng.HasField(name)]
    if not bounds:
        raise InvalidArgument(f"{path}: set at least one bound (gt, gte, lt or lte)")
    for name in bounds:
        _check_number(getattr(rng, name), f"{path}.{name}")
    if rng.HasField("gt") and rng.HasField("gte"):
        raise InvalidArgument(f"{path}: set gt or gte, not both")
    if rng.HasField("lt") and rng.HasField("lte"):
        raise InvalidArgument(f"{path}: set lt or lte, not both")


def check_diversity(diversity: search_pb2.Diversity, path: str = "diversity", limits: Limits = DEFAULT_LIMITS) -> None:
    _check_name(diversity.field, f"{path}.field", limits)
    if diversity.max_per_value < 1:
        raise InvalidArgument(f"{path}.max_per_value: must be at least 1")
