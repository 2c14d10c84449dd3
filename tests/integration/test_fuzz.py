"""Property tests over the public API: random and malformed requests never crash a server, never corrupt stored
data, and always get a status code and a message.

Every call must end OK or with one of the client-facing codes below, with details; UNKNOWN, INTERNAL (from our
code) and UNAVAILABLE (no shard is down here) are bugs. Valid writes the fuzzer happens to produce are tracked in a
model, so the stored data can be checked exactly afterwards. Runs derandomized (reproducible in CI); for a longer
exploration set SHARDSEARCH_FUZZ_SCALE=10 (10x the examples, random: reproduce with --hypothesis-seed=N).
"""

from __future__ import annotations

import base64
import collections
import io
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc, shard_pb2
from tests.integration.conftest import create

SEED, SCRATCH = "fuzz-seed", "fuzz_scratch"
DIM, SCRATCH_DIM, SEEDED = 8, 3, 40
SEED_IDS = frozenset(f"seed-{i}" for i in range(SEEDED))
TIMEOUT = 10.0  # per call; a call that runs into it is a hang, whatever code it ends with
CLIENT_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})
# What grpc.aio itself answers when the request bytes do not parse (our handlers never see them); it also logs the
# DecodeError with a traceback at ERROR level.
UNDECODABLE = (
    grpc.StatusCode.UNKNOWN, "Unexpected <class 'google.protobuf.message.DecodeError'>: Error parsing message",
)
# gRPC's own ERROR logs (each with a traceback) that this module provokes on purpose: undecodable requests, and an
# answer gRPC could not send: over the message size limit (test_answer_over_the_message_limit), or for a call whose
# deadline had just passed (test_search_under_short_deadlines; grpc/grpc#32551 logs it rather than raising).
# (Each line carries the request id in brackets: "ERROR <pid> grpc._cython.cygrpc [<id>] Unexpected ...".)
GRPC_LOGS = (
    r"ERROR {pid} grpc\._cython\.cygrpc \[[^]]*\] Unexpected \[DecodeError\] raised by servicer method \[/shardsearch\.v1\.",
    r"ERROR {pid} grpc\._cython\.cygrpc \[[^]]*\] ExecuteBatchError raised in core by servicer method \[/shardsearch\.v1\.",
)
SCALE = int(os.environ.get("SHARDSEARCH_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=40 * SCALE, deadline=None, derandomize=SCALE == 1, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
RAW_CODES: collections.Counter[str] = collections.Counter()


@dataclass
class Model:
    """What a collection must hold: id -> (packed vector, payload)."""

    dim: int
    items: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)


class Fuzz:
    """The cluster under test, a client, and the model of the tracked collections (a short repr for reports)."""

    def __init__(self, cluster: LocalCluster, stub: search_pb2_grpc.SearchServiceStub, channel: grpc.Channel,
                 models: dict[str, Model]) -> None:
        self.cluster, self.stub, self.channel, self.models = cluster, stub, channel, models

    def __repr__(self) -> str:
        return f"Fuzz({self.cluster.address})"


@pytest.fixture(scope="module")
def fuzz(cluster: LocalCluster) -> Fuzz:
    channel = grpc.insecure_channel(cluster.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = search_pb2_grpc.SearchServiceStub(channel)
    create(stub, SEED, DIM)
    stub.CreateCollection(search_pb2.CreateCollectionRequest(
        name=SCRATCH, dim=SCRATCH_DIM, metric=search_pb2.METRIC_INNER_PRODUCT,
    ))
    rng = np.random.default_rng(11)
    seed = Model(DIM)
    for i, vector in enumerate(rng.standard_normal((SEEDED, DIM)).astype(np.float32)):
        seed.items[f"seed-{i}"] = (codec.pack(vector), rng.bytes(int(rng.integers(0, 40))) if i % 3 else b"")
    stub.Upsert(search_pb2.UpsertRequest(collection=SEED, items=[
        search_pb2.Item(id=i, vector_f32=v, payload=p) for i, (v, p) in seed.items.items()
    ]))
    yield Fuzz(cluster, stub, channel, {SEED: seed, SCRATCH: Model(SCRATCH_DIM)})
    channel.close()


# ---- the invariant every call must keep -------------------------------------------------------------------------

def call(fn: Callable[..., Any], request: Message, timeout: float = TIMEOUT) -> Any:
    """Makes the call; returns the response or None for an acceptable error, fails the test for anything else."""
    started = time.monotonic()
    try:
        response = fn(request, timeout=timeout)
        event("OK")
        return response
    except grpc.RpcError as exc:
        event(exc.code().name)
        check_status(exc.code(), exc.details(), time.monotonic() - started, request)
        return None


def check_status(code: grpc.StatusCode, details: str | None, elapsed: float, request: object) -> None:
    where = f"{type(request).__name__} {str(request)[:300]!r}"
    assert code in CLIENT_CODES, f"{code.name} ({details!r}) for {where}"
    assert details, f"{code.name} without a message for {where}"
    assert elapsed < 0.9 * TIMEOUT, f"{where} hung for {elapsed:.1f}s"


def apply(models: dict[str, Model], request: object, response: object) -> None:
    """Records an acknowledged write in the model (a rejected one must have changed nothing)."""
    if response is None:
        return
    if isinstance(request, search_pb2.UpsertRequest):
        assert not any(item.text or item.image for item in request.items), f"embedded without an encoder: {request}"
    if isinstance(request, search_pb2.UpsertRequest) and request.collection in models:
        model = models[request.collection]
        for item in request.items:
            vector = item.vector_f32 or codec.pack(np.asarray(item.vector, dtype=np.float32))
            model.items[item.id] = (vector, item.payload)
        assert response.upserted == len(request.items)
    elif isinstance(request, search_pb2.DeleteRequest) and request.collection in models:
        model = models[request.collection]
        existed = {i for i in request.ids if i in model.items}
        for item_id in existed:
            del model.items[item_id]
        assert response.deleted == len(existed), (request, response)


# ---- strategies -------------------------------------------------------------------------------------------------

U32 = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 100, 1000, 1001, 4096, 4097, 65_536, 65_537, 2**32 - 1]),
                st.integers(0, 2**32 - 1))
I32 = st.one_of(st.integers(-3, 4), st.integers(-(2**31), 2**31 - 1))  # open enums take any int32


def pick(options: list) -> st.SearchStrategy:
    """sampled_from with a short repr (long strings and 64 KiB payloads make unreadable failure reports)."""
    return st.integers(0, len(options) - 1).map(options.__getitem__)


ODD_NAMES = ["", ".", "..", "../x", "a/b", "x\x00y", "a" * 128, "a" * 129, "ñame", "名前", " ", "missing", "🦀"]
names = st.one_of(pick(ODD_NAMES), st.text(max_size=160))
# Mostly a real collection, so requests get past the lookup (sampled_from is fairer than one_of's branch choice).
targets = st.sampled_from([SEED, SCRATCH, SEED, SCRATCH, SEED, SCRATCH, ""]).flatmap(
    lambda name: st.just(name) if name else names)
ODD_IDS = ["", "\x00", "../x", "a" * 256, "a" * 257, "é" * 128, "é" * 129, "名" * 85, "名" * 86, "🦀" * 64,
           "🦀" * 65]  # 256 bytes of UTF-8 is the limit
ids = st.one_of(pick(ODD_IDS), st.text(max_size=80), st.text(max_size=300)).filter(
    lambda i: i not in SEED_IDS)
good_ids = st.text(min_size=1, max_size=20).filter(lambda i: i not in SEED_IDS)
normal = st.floats(-100, 100, width=32)
SPECIAL = [float("nan"), float("inf"), float("-inf"), 1.9e19, -3e38, 1e16, 1e15, -1e15, -0.0, 1e-45]
odd_value = st.one_of(st.sampled_from(SPECIAL), st.floats(width=32))
payloads = st.one_of(st.binary(max_size=48), pick([b"", b"\x00" * 65_536, b"x" * 65_537]))


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


ODD_TEXTS = ["", " ", "\n\t ", "\x00", "a", "word " * 1639, "é" * 4097, "🦀" * 2048, "🦀" * 2049, "\ud7ff\ufffd"]
texts = st.one_of(pick(ODD_TEXTS), st.text(max_size=60), st.text(max_size=600))  # 8192 bytes is the default limit
ODD_IMAGES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM" + bytes(60), _png(),
              _png()[:60], b"\x00" * 65_536]
images = st.one_of(pick(ODD_IMAGES), st.binary(max_size=200))
# What an Item may carry instead of a vector (mostly nothing): the coordinator embeds it, if it has an encoder.
contents = st.one_of(st.just({}), st.just({}), texts.map(lambda t: {"text": t}), images.map(lambda b: {"image": b}))


@st.composite
def values(draw, length: int) -> list[float]:
    """Ordinary values, sometimes with one odd value in them (NaN, inf, huge, tiny, -0)."""
    out = draw(st.lists(normal, min_size=length, max_size=length))
    if out and draw(st.integers(0, 3)) == 0:
        out[draw(st.integers(0, length - 1))] = draw(odd_value)
    return out


@st.composite
def vectors(draw, dim: int) -> dict[str, object]:
    """The vector fields of an Item or SearchRequest: right or wrong length, floats, bytes, both or neither."""
    length = draw(st.one_of(st.just(dim), st.just(dim), st.sampled_from([0, 1, dim - 1, dim + 1, DIM, SCRATCH_DIM])))
    floats = draw(values(length))
    packed = codec.pack(np.asarray(floats, dtype=np.float32))
    form = draw(st.sampled_from(["floats", "packed", "packed", "both", "odd bytes", "none"]))
    return {"floats": {"vector": floats}, "packed": {"vector_f32": packed},
            "both": {"vector": floats, "vector_f32": packed},
            "odd bytes": {"vector_f32": draw(st.binary(min_size=1, max_size=4 * dim + 3))}, "none": {}}[form]


def dim_of(collection: str) -> int:
    return SCRATCH_DIM if collection == SCRATCH else DIM


def item(dim: int) -> tuple[st.SearchStrategy[search_pb2.Item], st.SearchStrategy[search_pb2.Item]]:
    """Well-formed items (so that valid writes happen and the model is exercised), and anything."""
    good = st.builds(
        lambda i, v, packed, p: search_pb2.Item(
            id=i, payload=p, **({"vector_f32": codec.pack(np.asarray(v, np.float32))} if packed else {"vector": v})),
        good_ids, st.lists(normal, min_size=dim, max_size=dim), st.booleans(), st.binary(max_size=20),
    )
    anything = st.builds(lambda i, v, p, c: search_pb2.Item(id=i, payload=p, **v, **c), ids, vectors(dim), payloads,
                         contents)
    return good, anything


@st.composite
def upserts(draw) -> search_pb2.UpsertRequest:
    collection = draw(targets)
    good, anything = item(dim_of(collection))
    items = draw(st.lists(draw(st.sampled_from([good, good | anything])), max_size=6))
    if items and draw(st.integers(0, 3)) == 0:
        items.append(draw(st.sampled_from(items)))  # a duplicate id
    return search_pb2.UpsertRequest(collection=collection, items=items)


ks = st.one_of(st.integers(1, 12), st.integers(1, 12), st.just(0), U32)
nprobes = st.one_of(st.just(0), st.just(0), st.integers(1, 64), U32)


def well_formed(draw) -> bool:
    """Half the requests are well-formed (and reach the search path); the rest may be wrong anywhere."""
    return draw(st.sampled_from([True, False]))


@st.composite
def searches(draw) -> search_pb2.SearchRequest:
    collection = draw(targets)
    dim = dim_of(collection)
    if well_formed(draw):
        vecs = {draw(st.sampled_from(["vector", "vector_f32"])): draw(st.lists(normal, min_size=dim, max_size=dim))}
        if "vector_f32" in vecs:
            vecs["vector_f32"] = codec.pack(np.asarray(vecs["vector_f32"], np.float32))
        k, nprobe = draw(st.integers(1, 60)), draw(st.integers(0, 64))
    else:
        vecs, k, nprobe = draw(vectors(dim)), draw(ks), draw(nprobes)
    return search_pb2.SearchRequest(
        collection=collection, k=k, nprobe=nprobe, partial_policy=draw(I32), include_payload=draw(st.booleans()),
        skip_cache=draw(st.booleans()), request_id=draw(st.text(max_size=20)), **vecs,
    )


@st.composite
def batch_searches(draw) -> search_pb2.BatchSearchRequest:
    collection = draw(targets)
    good = well_formed(draw)
    dim = dim_of(collection) if good else draw(st.sampled_from([dim_of(collection), 1, 5, DIM, SCRATCH_DIM]))
    rows = draw(st.integers(1, 12) if good else st.integers(0, 12))
    floats = draw(st.lists(normal, min_size=rows * dim, max_size=rows * dim) if good else values(rows * dim))
    packed = codec.pack(np.asarray(floats, dtype=np.float32))
    form = draw(st.sampled_from(["floats", "packed"] if good else ["floats", "packed", "both", "odd bytes"]))
    vecs = {"floats": {"vectors": floats}, "packed": {"vectors_f32": packed},
            "both": {"vectors": floats, "vectors_f32": packed},
            "odd bytes": {"vectors_f32": draw(st.binary(max_size=99))}}[form]
    return search_pb2.BatchSearchRequest(
        collection=collection, k=draw(st.integers(1, 60) if good else ks),
        nprobe=draw(st.integers(0, 64) if good else nprobes), partial_policy=draw(I32),
        include_payload=draw(st.booleans()), skip_cache=draw(st.booleans()), **vecs,
    )


option = st.one_of(st.just(0), st.just(0), st.just(0), U32)
fz_names = st.from_regex(r"\Afz-[a-z0-9]{1,8}\Z")


@st.composite
def creates(draw) -> search_pb2.CreateCollectionRequest:
    if well_formed(draw):
        dim = draw(st.integers(1, 24))
        index = search_pb2.IndexOptions(
            nlist=draw(st.sampled_from([0, 1, 8, 256])), pq_m=draw(st.sampled_from([0, 1, dim])),
            pq_nbits=draw(st.sampled_from([0, 4, 8])), train_threshold=draw(st.sampled_from([0, 256, 1000])),
            default_nprobe=draw(st.sampled_from([0, 1, 2**32 - 1])), refine_factor=draw(st.sampled_from([0, 1, 100])),
        )
        return search_pb2.CreateCollectionRequest(name=draw(fz_names), dim=dim, metric=draw(st.sampled_from([1, 2])),
                                                  index=index)
    index = search_pb2.IndexOptions(
        nlist=draw(option), pq_m=draw(option), pq_nbits=draw(st.one_of(option, st.sampled_from([4, 8]))),
        train_threshold=draw(option), default_nprobe=draw(option), refine_factor=draw(option),
    )
    return search_pb2.CreateCollectionRequest(
        name=draw(st.one_of(names, fz_names)), dim=draw(st.one_of(st.integers(0, 17), U32)), metric=draw(I32),
        index=index,
    )


# ---- fuzzing each RPC -------------------------------------------------------------------------------------------

@FUZZ
@given(request=upserts())
def test_upsert(fuzz: Fuzz, request: search_pb2.UpsertRequest) -> None:
    apply(fuzz.models, request, call(fuzz.stub.Upsert, request))


# An id list for Delete and Get: ("id", any id) or ("held", n), the n-th id the collection holds when the test runs
# (drawing from the model itself would make data generation depend on state, which Hypothesis refuses).
id_picks = st.lists(st.one_of(ids.map(lambda i: ("id", i)), st.integers(0, 999).map(lambda n: ("held", n))),
                    max_size=8)


def resolve(fuzz: Fuzz, collection: str, picks: list[tuple[str, object]], seeded: bool) -> list[str]:
    model = fuzz.models.get(collection)
    held = sorted(i for i in model.items if seeded or i not in SEED_IDS) if model else []
    return [str(v) if kind == "id" or not held else held[int(v) % len(held)] for kind, v in picks]  # type: ignore


@FUZZ
@given(collection=targets, picks=id_picks)
def test_delete(fuzz: Fuzz, collection: str, picks: list[tuple[str, object]]) -> None:
    request = search_pb2.DeleteRequest(collection=collection, ids=resolve(fuzz, collection, picks, seeded=False))
    apply(fuzz.models, request, call(fuzz.stub.Delete, request))


@FUZZ
@given(collection=targets, picks=id_picks)
def test_get(fuzz: Fuzz, collection: str, picks: list[tuple[str, object]]) -> None:
    request = search_pb2.GetRequest(collection=collection, ids=resolve(fuzz, collection, picks, seeded=True))
    response = call(fuzz.stub.Get, request)
    if response is not None and request.collection in fuzz.models:
        expected = fuzz.models[request.collection].items
        assert [i.id for i in response.items] == [i for i in dict.fromkeys(request.ids) if i in expected]
        for found in response.items:
            assert (found.vector_f32, found.payload) == expected[found.id], found.id


@FUZZ
@given(collection=targets, picks=id_picks, k=ks, nprobe=nprobes, threshold=st.one_of(st.none(), odd_value))
def test_search_by_id(
    fuzz: Fuzz, collection: str, picks: list[tuple[str, object]], k: int, nprobe: int, threshold: float | None
) -> None:
    ids = resolve(fuzz, collection, picks, seeded=True)
    request = search_pb2.SearchByIdRequest(
        collection=collection, id=ids[0] if ids else "", k=k, nprobe=nprobe,
        **({} if threshold is None else {"score_threshold": threshold}),
    )
    response = call(fuzz.stub.SearchById, request)
    if response is not None:
        assert request.id not in {hit.id for hit in response.hits}
        assert len(response.hits) <= request.k
        if request.collection in fuzz.models:
            assert {hit.id for hit in response.hits} <= set(fuzz.models[request.collection].items)


@FUZZ
@given(collection=targets, picks=id_picks, vecs=st.lists(st.lists(normal, min_size=8, max_size=8), max_size=3),
       weights=st.lists(st.one_of(st.just(0.0), odd_value), min_size=6, max_size=6), combine=I32, k=ks)
def test_search_combined(fuzz: Fuzz, collection: str, picks: list[tuple[str, object]], vecs: list[list[float]],
                         weights: list[float], combine: int, k: int) -> None:
    parts = [search_pb2.WeightedQuery(id=i) for i in resolve(fuzz, collection, picks, seeded=True)[:3]]
    parts += [search_pb2.WeightedQuery(vector_f32=codec.pack(np.asarray(v, np.float32))) for v in vecs]
    for query, weight in zip(parts, weights):
        query.weight = weight
    request = search_pb2.CombinedSearchRequest(collection=collection, queries=parts, combine=combine, k=k)
    response = call(fuzz.stub.SearchCombined, request)
    if response is not None:
        assert len(response.hits) <= request.k
        assert not {hit.id for hit in response.hits} & {q.id for q in parts if q.id}
        if request.collection in fuzz.models:
            assert {hit.id for hit in response.hits} <= set(fuzz.models[request.collection].items)


@FUZZ
@given(collection=targets, size=st.one_of(st.integers(0, 50), U32),
       token=st.one_of(st.just(""), st.text(max_size=60), st.binary(max_size=60).map(base64.urlsafe_b64encode)))
def test_list_ids(fuzz: Fuzz, collection: str, size: int, token: str | bytes) -> None:
    page_token = token.decode() if isinstance(token, bytes) else token
    request = search_pb2.ListIdsRequest(collection=collection, page_size=size, page_token=page_token)
    response = call(fuzz.stub.ListIds, request)
    if response is not None:
        assert len(response.ids) <= (size or 1000)
        if request.collection in fuzz.models:
            assert set(response.ids) <= set(fuzz.models[request.collection].items)


@FUZZ
@given(request=searches())
def test_search(fuzz: Fuzz, request: search_pb2.SearchRequest) -> None:
    response = call(fuzz.stub.Search, request)
    if response is not None:
        check_hits(fuzz, request.collection, request.k, response)
        assert response.request_id == request.request_id


@FUZZ
@given(request=batch_searches())
def test_batch_search(fuzz: Fuzz, request: search_pb2.BatchSearchRequest) -> None:
    response = call(fuzz.stub.BatchSearch, request)
    if response is not None:
        assert response.results, request
        for result in response.results:
            check_hits(fuzz, request.collection, request.k, result)


@settings(FUZZ, max_examples=20 * SCALE)
@given(request=st.one_of(searches(), batch_searches()), deadline=st.floats(0.0005, 0.05))
def test_search_under_short_deadlines(fuzz: Fuzz, request: object, deadline: float) -> None:
    """Deadlines that expire anywhere on the way (coordinator, batcher, shards): OK or DEADLINE_EXCEEDED, cleanly.
    (Reads only: a write that times out may still be applied, which the model could not follow.)"""
    method = fuzz.stub.Search if isinstance(request, search_pb2.SearchRequest) else fuzz.stub.BatchSearch
    call(method, request, timeout=deadline)


@settings(FUZZ, max_examples=15 * SCALE)
@given(requests=st.lists(searches(), max_size=6))
def test_stream_search(fuzz: Fuzz, requests: list[search_pb2.SearchRequest]) -> None:
    """A bad request in a stream gets its own error answer; every request is answered exactly once."""
    for i, request in enumerate(requests):
        request.request_id = f"r{i}"
    started = time.monotonic()
    answers = list(fuzz.stub.StreamSearch(iter(requests), timeout=TIMEOUT))
    assert sorted(a.request_id for a in answers) == sorted(r.request_id for r in requests)
    by_id = {r.request_id: r for r in requests}
    for answer in answers:
        request = by_id[answer.request_id]
        if answer.error_code:
            check_status(_code(answer.error_code), answer.error_message, time.monotonic() - started, request)
        else:
            check_hits(fuzz, request.collection, request.k, answer.response)


# ---- the encoder's RPCs, on a cluster without an encoder --------------------------------------------------------
# Every call that needs an embedding must fail: FAILED_PRECONDITION saying which model is not configured, or an error
# about the request found first (INVALID_ARGUMENT: bad k, no input, too many; NOT_FOUND: unknown collection).

NO_ENCODER_CODES = frozenset({
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
})


def call_without_encoder(fn: Callable[..., Any], request: Message) -> grpc.StatusCode:
    """Makes a call that needs the (missing) encoder: the usual invariant, and never OK."""
    started = time.monotonic()
    try:
        response = fn(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        event(exc.code().name)
        check_status(exc.code(), exc.details(), time.monotonic() - started, request)
        where = f"{type(request).__name__} {str(request)[:300]!r}"
        assert exc.code() in NO_ENCODER_CODES, f"{exc.code().name} ({exc.details()!r}) for {where}"
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            assert re.search(r"no (text|image) model is configured", exc.details()), (exc.details(), where)
        return exc.code()
    raise AssertionError(f"OK without an encoder: {type(request).__name__} {str(request)[:300]!r} -> "
                         f"{str(response)[:300]!r}")


def _by_content_options(draw) -> dict[str, Any]:
    """The search options SearchByText and SearchByImage share with Search, well-formed or anything."""
    threshold = draw(st.one_of(st.none(), odd_value))
    good = well_formed(draw)
    return {
        "collection": draw(targets), "k": draw(st.integers(1, 60) if good else ks),
        "nprobe": draw(st.integers(0, 64) if good else nprobes), "partial_policy": draw(I32),
        "include_payload": draw(st.booleans()), "skip_cache": draw(st.booleans()),
        "min_shards": draw(st.one_of(st.just(0), U32)), "request_id": draw(st.text(max_size=20)),
        **({} if threshold is None else {"score_threshold": threshold}),
    }


@st.composite
def text_searches(draw) -> search_pb2.SearchByTextRequest:
    return search_pb2.SearchByTextRequest(text=draw(texts), **_by_content_options(draw))


@st.composite
def image_searches(draw) -> search_pb2.SearchByImageRequest:
    return search_pb2.SearchByImageRequest(image=draw(images), **_by_content_options(draw))


@st.composite
def encodes(draw) -> search_pb2.EncodeRequest:
    many = draw(st.integers(0, 9)) == 0  # over the 10000 inputs per call
    return search_pb2.EncodeRequest(
        texts=[""] * 10_001 if many else draw(st.lists(texts, max_size=4)),
        images=draw(st.lists(images, max_size=3)),
        collection=draw(st.one_of(st.just(""), st.just(""), targets)),
    )


@FUZZ
@given(request=text_searches())
def test_search_by_text(fuzz: Fuzz, request: search_pb2.SearchByTextRequest) -> None:
    call_without_encoder(fuzz.stub.SearchByText, request)


@FUZZ
@given(request=image_searches())
def test_search_by_image(fuzz: Fuzz, request: search_pb2.SearchByImageRequest) -> None:
    call_without_encoder(fuzz.stub.SearchByImage, request)


@FUZZ
@given(request=encodes())
def test_encode(fuzz: Fuzz, request: search_pb2.EncodeRequest) -> None:
    code = call_without_encoder(fuzz.stub.Encode, request)
    if not request.texts and not request.images:
        assert code == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(collection=targets, parts=st.lists(st.one_of(texts.map(lambda t: search_pb2.WeightedQuery(text=t)),
                                                    images.map(lambda b: search_pb2.WeightedQuery(image=b))),
                                          min_size=1, max_size=3),
       vecs=st.lists(st.lists(normal, min_size=8, max_size=8), max_size=2), k=ks)
def test_search_combined_with_texts_and_images(fuzz: Fuzz, collection: str, parts: list[search_pb2.WeightedQuery],
                                               vecs: list[list[float]], k: int) -> None:
    """A combined query with a text or image part needs the encoder too, whatever its vector parts."""
    parts = parts + [search_pb2.WeightedQuery(vector_f32=codec.pack(np.asarray(v, np.float32))) for v in vecs]
    call_without_encoder(fuzz.stub.SearchCombined,
                         search_pb2.CombinedSearchRequest(collection=collection, queries=parts, k=k))


def _code(value: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == value)


def check_hits(fuzz: Fuzz, collection: str, k: int, response: search_pb2.SearchResponse) -> None:
    assert len(response.hits) <= k and not response.partial, response
    found = [hit.id for hit in response.hits]
    assert all(found) and len(set(found)) == len(found), found
    if collection in fuzz.models:
        assert set(found) <= fuzz.models[collection].items.keys(), found
        assert len(found) == min(k, len(fuzz.models[collection].items))
        scores = [hit.score for hit in response.hits]  # best first: L2 ascending, inner product descending
        assert scores == sorted(scores, reverse=collection == SCRATCH), scores


@FUZZ
@given(request=creates())
def test_create_collection(fuzz: Fuzz, request: search_pb2.CreateCollectionRequest) -> None:
    response = call(fuzz.stub.CreateCollection, request)
    if response is not None:  # a valid one: it must be usable, then goes again
        assert response.collection.name == request.name
        info = fuzz.stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=request.name), timeout=TIMEOUT)
        assert info.collection.dim == request.dim and len(info.shards) == len(fuzz.cluster.shard_procs)
        assert not any(s.error for s in info.shards), info
        use_new_collection(fuzz.stub, request.name, request.dim)
        fuzz.stub.DropCollection(search_pb2.DropCollectionRequest(name=request.name), timeout=TIMEOUT)
    assert request.name in (SEED, SCRATCH) or request.name not in collection_names(fuzz)


def use_new_collection(stub: search_pb2_grpc.SearchServiceStub, name: str, dim: int) -> None:
    """Writes a few vectors and finds each one (exact search: nothing trains on so few)."""
    vectors = np.random.default_rng(dim).standard_normal((5, dim)).astype(np.float32)
    stub.Upsert(search_pb2.UpsertRequest(collection=name, items=[
        search_pb2.Item(id=f"n{i}", vector_f32=codec.pack(v)) for i, v in enumerate(vectors)
    ]), timeout=TIMEOUT)
    found = stub.BatchSearch(search_pb2.BatchSearchRequest(collection=name, vectors_f32=codec.pack(vectors), k=5),
                             timeout=TIMEOUT)
    assert [len(r.hits) for r in found.results] == [5] * 5


@FUZZ
@given(name=names.filter(lambda n: n not in (SEED, SCRATCH)))
def test_drop_and_describe_collection(fuzz: Fuzz, name: str) -> None:
    call(fuzz.stub.DescribeCollection, search_pb2.DescribeCollectionRequest(name=name))
    call(fuzz.stub.DropCollection, search_pb2.DropCollectionRequest(name=name))


def collection_names(fuzz: Fuzz) -> set[str]:
    listed = fuzz.stub.ListCollections(search_pb2.ListCollectionsRequest(), timeout=TIMEOUT)
    return {c.name for c in listed.collections}


# ---- raw bytes: not even a protobuf message ---------------------------------------------------------------------

PUBLIC = [f"/shardsearch.v1.SearchService/{m}" for m in (
    "CreateCollection", "DropCollection", "ListCollections", "DescribeCollection", "Upsert", "Delete", "Get", "Search",
    "BatchSearch", "SearchById", "ListIds", "SearchCombined", "SearchByText", "SearchByImage", "Encode",
)]
INTERNAL = [f"/shardsearch.v1.ShardService/{m}" for m in ("Search", "Get", "Stats", "Upsert", "Delete", "ListIds")]
raw_bytes = st.one_of(st.binary(max_size=300), st.sampled_from([b"\xff", b"\x0a\x02\xc3\x28", b"\x12\x05abc"]))


@settings(FUZZ, max_examples=60 * SCALE)
@given(method=st.sampled_from(PUBLIC + INTERNAL), body=raw_bytes)
def test_raw_bytes(fuzz: Fuzz, method: str, body: bytes) -> None:
    """Arbitrary bytes as the request, to the coordinator and to a shard: a status with details, never a crash.

    Bytes that parse are a (random) valid message and must keep the usual invariant.
    """
    internal = method.startswith("/shardsearch.v1.ShardService/")
    if internal and method.endswith(("/Upsert", "/Delete")) and not _names_unknown_collection(method, body):
        return  # a direct write that parses would bypass the ring; only the undecodable ones are of interest
    address = fuzz.cluster.shard_procs[0].address if internal else fuzz.cluster.address
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        started = time.monotonic()
        try:
            rpc(body, timeout=TIMEOUT)
            RAW_CODES["OK"] += 1
        except grpc.RpcError as exc:
            undecodable = exc.code() == UNDECODABLE[0] and (exc.details() or "").startswith(UNDECODABLE[1])
            RAW_CODES[f"{exc.code().name} (gRPC: request does not parse)" if undecodable else exc.code().name] += 1
            if not undecodable:
                check_status(exc.code(), exc.details(), time.monotonic() - started, body)


@settings(FUZZ, max_examples=15 * SCALE)
@given(messages=st.lists(st.one_of(searches().map(lambda r: r.SerializeToString()), raw_bytes), max_size=5))
def test_raw_bytes_in_a_stream(fuzz: Fuzz, messages: list[bytes]) -> None:
    """StreamSearch: a message that does not parse ends the stream with gRPC's status; the others get answers."""
    rpc = fuzz.channel.stream_stream("/shardsearch.v1.SearchService/StreamSearch",
                                     request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    try:
        answers = [search_pb2.StreamSearchResponse.FromString(a) for a in rpc(iter(messages), timeout=TIMEOUT)]
    except grpc.RpcError as exc:
        RAW_CODES[f"StreamSearch {exc.code().name}"] += 1
        assert exc.code() == UNDECODABLE[0] and exc.details().startswith(UNDECODABLE[1]), (exc.code(), exc.details())
        assert time.monotonic() - started < 0.9 * TIMEOUT
        return
    RAW_CODES["StreamSearch OK"] += 1
    assert len(answers) == len(messages)
    for answer in answers:
        if answer.error_code:
            check_status(_code(answer.error_code), answer.error_message, time.monotonic() - started, messages)


def _names_unknown_collection(method: str, body: bytes) -> bool:
    cls = shard_pb2.ShardUpsertRequest if method.endswith("/Upsert") else shard_pb2.ShardDeleteRequest
    try:
        return cls.FromString(body).collection not in (SEED, SCRATCH)
    except Exception:
        return True


# ---- limits: a clear message naming the field and the limit ----------------------------------------------------
# (k, nprobe, id length, payload size, items per Upsert, dim and the transport's limit on an Upsert are in
# test_validation.py)

@pytest.mark.parametrize("method,request_,message", [
    ("BatchSearch", search_pb2.BatchSearchRequest(collection=SEED, k=1, vectors_f32=bytes(4 * DIM * 10_001)),
     "vectors: 10001 queries exceeds the maximum of 10000"),
    ("BatchSearch", search_pb2.BatchSearchRequest(collection=SEED, k=1000, vectors_f32=bytes(4 * DIM * 1001)),
     "vectors, k: 1001 queries x k 1000 = 1001000 results exceeds the maximum of 1000000"),
    ("Search", search_pb2.SearchRequest(collection=SEED, vector=[0.0] * (DIM - 1) + [1.9e19], k=1),
     "vector: value 1.9e+19 exceeds the maximum magnitude 1e+15"),
    ("Upsert", search_pb2.UpsertRequest(collection=SEED, items=[search_pb2.Item(id="big", vector=[-3e38] * DIM)]),
     "items[0].vector: value -3e+38 exceeds the maximum magnitude 1e+15"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(
        name="fz", dim=4, metric=2, index=search_pb2.IndexOptions(train_threshold=100)),
     "index.train_threshold: 100 is below 256"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(
        name="fz", dim=4, metric=2, index=search_pb2.IndexOptions(nlist=20_000)),
     "index.nlist: 20000 lists need at least as many training vectors, but train_threshold is 10000"),
    ("Get", search_pb2.GetRequest(collection=SEED, ids=[f"g{i}" for i in range(10_001)]),
     "ids: 10001 ids exceeds the maximum of 10000"),
    ("Delete", search_pb2.DeleteRequest(collection=SEED, ids=[f"g{i}" for i in range(10_001)]),
     "ids: 10001 ids exceeds the maximum of 10000"),
    ("Get", search_pb2.GetRequest(collection=SEED, ids=["ok", "x" * 257]), "ids[1]: id is longer than 256 bytes"),
    ("Delete", search_pb2.DeleteRequest(collection=SEED, ids=["🦀" * 65]), "ids[0]: id is longer than 256 bytes"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="fz", dim=2**32 - 1, metric=search_pb2.METRIC_L2),
     "dim: 4294967295 must be between 1 and 4096"),
    ("Search", search_pb2.SearchRequest(collection=SEED, vector=[0.0] * DIM, k=2**32 - 1),
     "k: 4294967295 must be between 1 and 1000"),
])
def test_limit_is_named_in_the_error(fuzz: Fuzz, method: str, request_: object, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(fuzz.stub, method)(request_, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details(), err.value.details()


def test_limits_are_inclusive(fuzz: Fuzz) -> None:
    """The documented maxima themselves are accepted (then removed again, so the model stays exact)."""
    stub = fuzz.stub
    longest = ["a" * 256, "é" * 128, "🦀" * 64]
    stub.Upsert(search_pb2.UpsertRequest(collection=SCRATCH, items=[
        search_pb2.Item(id=i, vector=[1.0] * SCRATCH_DIM, payload=b"p" * 65_536) for i in longest
    ]), timeout=TIMEOUT)
    got = stub.Get(search_pb2.GetRequest(collection=SCRATCH, ids=longest), timeout=TIMEOUT).items
    assert [g.id for g in got] == longest and all(len(g.payload) == 65_536 for g in got)
    assert stub.Delete(search_pb2.DeleteRequest(collection=SCRATCH, ids=longest), timeout=TIMEOUT).deleted == 3
    for item_id in longest:  # the fuzzing may have stored one of them before
        fuzz.models[SCRATCH].items.pop(item_id, None)
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="fz-max", dim=4096, metric=2), timeout=TIMEOUT)
    stub.DropCollection(search_pb2.DropCollectionRequest(name="fz-max"), timeout=TIMEOUT)
    reply = stub.Search(search_pb2.SearchRequest(collection=SEED, vector=[0.0] * DIM, k=1000), timeout=TIMEOUT)
    assert len(reply.hits) == len(fuzz.models[SEED].items)


def test_message_over_the_transport_limit_names_the_limit(fuzz: Fuzz) -> None:
    """A request over the server's 64 MiB receive limit: RESOURCE_EXHAUSTED from gRPC, saying so."""
    with pytest.raises(grpc.RpcError) as err:
        fuzz.stub.BatchSearch(search_pb2.BatchSearchRequest(
            collection=SEED, k=1, vectors_f32=bytes((64 << 20) + 4 * DIM)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"larger than max \(\d+ vs\. 67108864\)", err.value.details()), err.value.details()


def test_answer_over_the_message_limit(fuzz: Fuzz) -> None:
    """Within every request limit, but the answer is not: 80 queries x 16 hits per shard x 64 KiB payloads is 84 MB
    per shard. RESOURCE_EXHAUSTED naming the limit (the shard's 32 MiB cap on an answer's payloads, checked before
    the answer is built), not UNAVAILABLE (which says: retry)."""
    stub, name = fuzz.stub, "fz-big-answers"
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name=name, dim=1, metric=2), timeout=TIMEOUT)
    try:
        stub.Upsert(search_pb2.UpsertRequest(collection=name, items=[
            search_pb2.Item(id=f"b{i}", vector=[float(i)], payload=b"p" * 65_536) for i in range(64)
        ]), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as err:
            stub.BatchSearch(search_pb2.BatchSearchRequest(
                collection=name, vectors=[0.0] * 80, k=64, include_payload=True, skip_cache=True), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "the answer is over the message size limit" in err.value.details(), err.value.details()
        assert "max_answer_payload_bytes" in err.value.details() and "no payloads" in err.value.details()
        assert len(stub.BatchSearch(search_pb2.BatchSearchRequest(
            collection=name, vectors=[0.0] * 80, k=64, skip_cache=True), timeout=30).results) == 80
    finally:
        stub.DropCollection(search_pb2.DropCollectionRequest(name=name), timeout=TIMEOUT)


# ---- afterwards: everything still up, nothing corrupted ---------------------------------------------------------

def test_servers_alive_and_data_intact(fuzz: Fuzz) -> None:
    """Runs last in this module (pytest keeps file order): checks what the fuzzing above must not have broken."""
    print(f"\nraw-bytes fuzz answers: {dict(RAW_CODES)}")
    for proc in fuzz.cluster.coordinator_procs + fuzz.cluster.shard_procs:
        assert proc.popen is not None and proc.popen.poll() is None, f"{proc.name} died:\n{proc.log_tail()}"
        with grpc.insecure_channel(proc.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, proc.name
    stub = fuzz.stub
    assert {SEED, SCRATCH} <= collection_names(fuzz)
    for name, model in fuzz.models.items():
        info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name=name), timeout=TIMEOUT)
        assert info.total_vectors == len(model.items), name
        assert info.collection.dim == model.dim
        if model.items:
            stored = stub.Get(search_pb2.GetRequest(collection=name, ids=list(model.items)), timeout=TIMEOUT).items
            assert {i.id: (i.vector_f32, i.payload) for i in stored} == model.items, name
    for item_id in sorted(SEED_IDS):
        vector, payload = fuzz.models[SEED].items[item_id]
        reply = stub.Search(search_pb2.SearchRequest(
            collection=SEED, vector_f32=vector, k=1, include_payload=True, skip_cache=True), timeout=TIMEOUT)
        same = {i for i, (v, _) in fuzz.models[SEED].items.items() if v == vector}
        assert reply.hits[0].id in same and reply.hits[0].score == 0.0, (item_id, reply)
        assert reply.hits[0].payload == payload
    for proc in fuzz.cluster.coordinator_procs + fuzz.cluster.shard_procs:
        allowed = [line.format(pid=proc.popen.pid) for line in GRPC_LOGS]
        check_log(proc.name, proc.log_path.read_text(errors="replace"), allowed)


def check_log(name: str, log: str, expected: list[str]) -> None:
    """No error logged by our code: the only errors and tracebacks allowed are gRPC's own (GRPC_LOGS)."""
    lines = log.splitlines()
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    unexpected = [line for line in errors if not any(re.search(e, line) for e in expected)]
    assert not unexpected, f"{name} logged errors:\n" + "\n".join(unexpected[:20])
    # A chained exception prints one traceback per link ("During handling of the above exception...").
    tracebacks = sum(line.startswith("Traceback") for line in lines) - sum(
        line.startswith(("During handling of the above exception", "The above exception was the direct cause"))
        for line in lines
    )
    assert tracebacks == len(errors), f"{name} printed a traceback of its own:\n{log[-5000:]}"

