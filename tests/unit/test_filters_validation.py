"""Structured fields, filters and diversity settings: every limit, and error messages that name the offending path."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shardsearch import codec, topology
from shardsearch.client_messages import all_of, any_of, match, none_of, number_range
from shardsearch.coordinator.router import Router
from shardsearch.coordinator.writes import route_items
from shardsearch.errors import InvalidArgument
from shardsearch.v1 import search_pb2
from shardsearch.validation import DEFAULT_LIMITS, check_diversity, check_fields, check_filter

F = search_pb2.Filter
V = search_pb2.Value


def fields(**values: V) -> search_pb2.Fields:
    return search_pb2.Fields(values=values)


def keywords(*values: str) -> V:
    return V(keywords=search_pb2.Keywords(values=values))


def refused(message: str) -> pytest.RaisesContext:  # type: ignore[type-arg]
    return pytest.raises(InvalidArgument, match=message)


# ---- fields -------------------------------------------------------------------------------------------------


def test_well_formed_fields_pass_up_to_every_limit() -> None:
    check_fields(fields())
    check_fields(fields(category=V(keyword="shoes"), price=V(number=-12.5), tags=keywords("a", "b"), none=keywords()))
    at_limits = {f"f{i:02d}": V(keyword="k" * 8) for i in range(63)}
    at_limits["n" * 64] = keywords(*["x"] * 16)
    check_fields(search_pb2.Fields(values=at_limits))
    check_fields(fields(k=V(keyword="é" * 128)))  # 256 bytes of UTF-8
    check_fields(fields(tags=keywords(*[f"t{i}" for i in range(256)])))


@pytest.mark.parametrize("bad, message", [
    ({f"f{i}": V(number=i) for i in range(65)}, r"items\[0\]\.fields: 65 fields exceeds the maximum of 64"),
    ({"": V(keyword="x")}, r"items\[0\]\.fields: a field name must not be empty"),
    ({"n" * 65: V(keyword="x")}, "longer than 64 bytes"),
    ({"é" * 33: V(keyword="x")}, "longer than 64 bytes"),  # 33 characters, 66 bytes
    ({"color": V()}, r"items\[0\]\.fields\['color'\]: set keyword, number or keywords"),
    ({"color": V(keyword="")}, r"items\[0\]\.fields\['color'\]: a keyword must not be empty"),
    ({"color": V(keyword="x" * 257)}, r"items\[0\]\.fields\['color'\]: keyword is longer than 256 bytes"),
    ({"price": V(number=math.nan)}, r"items\[0\]\.fields\['price'\]: nan is not a finite number"),
    ({"price": V(number=math.inf)}, r"fields\['price'\]: inf is not a finite number"),
    ({"price": V(number=-math.inf)}, r"fields\['price'\]: -inf is not a finite number"),
    ({"tags": keywords(*["x"] * 257)}, r"fields\['tags'\]: 257 keywords exceeds the maximum of 256"),
    ({"tags": keywords("a", "")}, r"fields\['tags'\]\.keywords\[1\]: a keyword must not be empty"),
    ({"tags": keywords("a", "b" * 257)}, r"fields\['tags'\]\.keywords\[1\]: keyword is longer than 256 bytes"),
])
def test_bad_fields_are_refused_naming_the_field(bad: dict[str, V], message: str) -> None:
    with refused(message):
        check_fields(search_pb2.Fields(values=bad), "items[0].fields")


def test_fields_over_16_kib_serialised_are_refused() -> None:
    big = search_pb2.Fields(values={f"f{i}": keywords(*["x" * 250] * 2) for i in range(40)})  # each small enough
    assert big.ByteSize() > DEFAULT_LIMITS.max_fields_bytes
    with refused(rf"items\[7\]\.fields: {big.ByteSize()} bytes serialised exceeds 16384"):
        check_fields(big, "items[7].fields")


# ---- filters ------------------------------------------------------------------------------------------------


def test_well_formed_filters_pass() -> None:
    check_filter(match("category", "shoes"))
    check_filter(match("tags", *[f"t{i}" for i in range(1024)]))
    check_filter(number_range("price", gte=1.0))
    check_filter(number_range("price", gt=1.0, lt=2.0))
    check_filter(number_range("price", gte=5.0, lte=5.0))
    check_filter(number_range("price", gt=9.0, lt=1.0))  # matches nothing, but is not malformed
    check_filter(all_of(match("a", "x"), any_of(number_range("p", lte=3), none_of(match("t", "u", "v")))))


def nested(levels: int) -> F:
    flt = match("a", "x")
    for _ in range(levels):
        flt = all_of(flt)
    return flt


def test_nesting_and_condition_count_limits() -> None:
    check_filter(nested(8))
    with refused(r"^filter(\.all_of\[0\]){8}\.all_of: filters are nested more than 8 deep"):
        check_filter(nested(9))
    check_filter(any_of(*[match("a", str(i)) for i in range(64)]))
    with refused(r"filter\.any_of\[64\]: the filter has more than 64 match and range conditions"):
        check_filter(any_of(*[match("a", str(i)) for i in range(65)]))
    spread = all_of(*[any_of(*[number_range("p", gt=i) for i in range(30)]) for _ in range(3)])  # 90 in all
    with refused(r"filter\.all_of\[2\]\.any_of\[4\]: the filter has more than 64"):
        check_filter(spread)


@pytest.mark.parametrize("flt, message", [
    (F(), r"^filter: set one of match, range, all_of, any_of or none_of$"),
    (all_of(match("a", "x"), F()), r"^filter\.all_of\[1\]: set one of match"),
    (all_of(), r"^filter\.all_of: give at least one filter$"),
    (any_of(), r"^filter\.any_of: give at least one filter$"),
    (all_of(match("a", "x"), none_of()), r"^filter\.all_of\[1\]\.none_of: give at least one filter$"),
    (match("", "x"), r"^filter\.match\.field: a field name must not be empty$"),
    (match("f" * 65, "x"), r"^filter\.match\.field: field name .* is longer than 64 bytes$"),
    (match("a"), r"^filter\.match\.values: 0 values; give 1 to 1024$"),
    (match("a", *["v"] * 1025), r"^filter\.match\.values: 1025 values; give 1 to 1024$"),
    (match("a", "x", ""), r"^filter\.match\.values\[1\]: a keyword must not be empty$"),
    (match("a", "x" * 257), r"^filter\.match\.values\[0\]: keyword is longer than 256 bytes$"),
    (number_range("", gt=1), r"^filter\.range\.field: a field name must not be empty$"),
    (all_of(match("a", "x"), match("b", "y"), number_range("p")), r"^filter\.all_of\[2\]\.range: set at least one bound"),
    (number_range("p", gt=math.nan), r"^filter\.range\.gt: nan is not a finite number$"),
    (number_range("p", lte=math.inf), r"^filter\.range\.lte: inf is not a finite number$"),
    (number_range("p", gt=1, gte=1), r"^filter\.range: set gt or gte, not both$"),
    (number_range("p", lt=1, lte=1), r"^filter\.range: set lt or lte, not both$"),
    (none_of(any_of(number_range("p", gte=-math.inf))), r"^filter\.none_of\[0\]\.any_of\[0\]\.range\.gte: -inf is not a finite"),
])
def test_bad_filters_are_refused_naming_the_condition(flt: F, message: str) -> None:
    with refused(message):
        check_filter(flt)


def test_a_huge_filter_fails_fast_at_its_limit() -> None:
    flt = any_of(*[match("a", "x")] * 100_000)
    with refused(r"filter\.any_of\[64\]"):
        check_filter(flt)


# ---- diversity ----------------------------------------------------------------------------------------------


def test_diversity_settings() -> None:
    check_diversity(search_pb2.Diversity(field="category", max_per_value=1))
    with refused(r"^diversity\.field: a field name must not be empty$"):
        check_diversity(search_pb2.Diversity(max_per_value=1))
    with refused(r"^diversity\.field: field name .* is longer than 64 bytes$"):
        check_diversity(search_pb2.Diversity(field="x" * 65, max_per_value=1))
    with refused(r"^diversity\.max_per_value: must be at least 1$"):
        check_diversity(search_pb2.Diversity(field="category"))


# ---- writes: fields routed to the owning shards --------------------------------------------------------------


def route(items: list[search_pb2.Item], shards: int = 3) -> list:  # type: ignore[type-arg]
    spec = search_pb2.Collection(name="c", dim=2, metric=search_pb2.METRIC_L2)
    names = [f"shard-{i}" for i in range(shards)]
    pool: Any = SimpleNamespace(by_name={name: name for name in names})
    router = Router(pool, topology.bootstrap([(name, ["unused:1"]) for name in names]))
    return route_items(search_pb2.UpsertRequest(collection="c", items=items), spec, router, DEFAULT_LIMITS)


def item(i: int, **values: V) -> search_pb2.Item:
    return search_pb2.Item(id=f"id-{i}", vector_f32=codec.pack(np.array([i, 0], np.float32)), fields=values)


def test_fields_travel_one_per_id_only_to_the_shards_whose_items_have_some() -> None:
    items = [item(i, n=V(number=i)) if i % 5 == 0 else item(i) for i in range(60)]
    routed = route(items)
    by_id = {i.id: i for i in items}
    with_fields = 0
    for _, request in routed:
        if request.fields:
            assert len(request.fields) == len(request.ids)
            for item_id, sent in zip(request.ids, request.fields):
                assert dict(sent.values) == dict(by_id[item_id].fields)
            with_fields += 1
        else:
            assert not any(by_id[i].fields for i in request.ids)
    assert with_fields >= 1
    assert all(not request.fields for _, request in route([item(i) for i in range(30)]))


def test_bad_fields_in_an_upsert_name_the_item() -> None:
    with refused(r"^items\[2\]\.fields\['price'\]: nan is not a finite number$"):
        route([item(0), item(1, c=V(keyword="a")), item(2, price=V(number=math.nan))])
