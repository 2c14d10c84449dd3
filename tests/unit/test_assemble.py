"""The two ways a coordinator assembles the shards' answers (plain Python for a few candidates, inline; numpy for
many, in the executor) give the same responses, ties, missing hits, duplicates, payloads and fields included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardsearch import codec
from shardsearch.coordinator.search import assemble, assemble_large, assemble_small, small
from shardsearch.v1 import search_pb2, shard_pb2


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[shard_pb2.ShardSearchResponse], int, bool, bool, bool, bool]:
    shards, n, width = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    with_payloads, with_fields = draw(st.booleans()), draw(st.booleans())
    responses = []
    for s in range(shards):
        size = n * width
        ids = draw(st.lists(st.sampled_from(["", "a", "b", "c", "d", f"s{s}", f"t{s}"]), min_size=size, max_size=size))
        scores = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=size, max_size=size))
        response = shard_pb2.ShardSearchResponse(n=n, k=width, ids=ids, scores_f32=codec.pack(np.array(scores)))
        if with_payloads:
            response.payloads.extend(f"p-{i}".encode() for i in ids)
        if with_fields and draw(st.booleans()):
            for i in ids:
                fields = response.fields.add()
                if i:
                    fields.values["tag"].keyword = i
        responses.append(response)
    k = draw(st.integers(1, 8))
    return responses, k, draw(st.booleans()), with_payloads, with_fields, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(answers(), st.booleans())
def test_small_and_large_assembly_agree(case, partial: bool) -> None:
    responses, k, higher_is_better, payloads, fields, dedupe = case
    missing = ["shard-9"] if partial else []
    args = (responses, k, higher_is_better, payloads, missing, fields, dedupe)
    assert assemble_small(*args) == assemble_large(*args)


def test_one_query_over_four_shards_is_small_and_a_batch_is_not() -> None:
    def answer(n: int) -> shard_pb2.ShardSearchResponse:
        return shard_pb2.ShardSearchResponse(n=n, k=10, ids=["x"] * n * 10, scores_f32=codec.pack(np.zeros(n * 10)))

    assert small([answer(1)] * 4) and not small([answer(256)] * 4) and not small([])
    (response,) = assemble([answer(1)] * 4, 3, False, False, [])
    assert isinstance(response, search_pb2.SearchResponse) and [h.id for h in response.hits] == ["x", "x", "x"]
