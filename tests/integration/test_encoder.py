"""Search by text and by image through a real Triton Inference Server (nvidia-pytriton, scripts/triton_models.py).

Triton serves all-MiniLM-L6-v2 (a real sentence-embedding model) and a small deterministic image embedder (client-
and server-side preprocessing variants). The coordinator talks to it over tritonclient.grpc.aio; a real redis-server
holds the embedding cache. Marked `triton`: `pytest -m "not triton"` skips them; without `.triton-venv`
(scripts/setup_triton.sh) they skip, except under CI where they fail.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from shardsearch import codec
from shardsearch.tools.local import (
    TRITON_DIM,
    TRITON_IMAGE_BYTES_MODEL,
    LocalCluster,
    RedisServer,
    TritonServer,
    free_port,
)
from shardsearch.v1 import search_pb2 as pb
from shardsearch.v1 import search_pb2_grpc
from tests.integration.conftest import Samples, connect, metric_sum, running_cluster, scrape

pytestmark = pytest.mark.triton

SENTENCES = Path(__file__).resolve().parents[1] / "data" / "sentences.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not TritonServer.available():
        if os.environ.get("CI"):
            pytest.fail("no Triton environment: run scripts/setup_triton.sh (CI must)")
        pytest.skip("no Triton environment: run scripts/setup_triton.sh")
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = TritonServer(log_path=log)
    with server:
        yield server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("redis-server not installed")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(triton: TritonServer, redis: RedisServer, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    args = [*triton.coordinator_args(), "--redis-url", redis.url, "--encoder-wait-s", "60"]

    def triton_log() -> str:
        return f"\n=== triton log ===\n{triton.log_path.read_text()[-4000:]}"

    with running_cluster(request, triton_log, shards=2, metrics=True, coordinator_args=args) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> search_pb2_grpc.SearchServiceStub:
    return connect(cluster)


def create(stub: search_pb2_grpc.SearchServiceStub, name: str, dim: int = TRITON_DIM,
           metric: int = pb.METRIC_INNER_PRODUCT) -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=dim, metric=metric))


def metrics(cluster: LocalCluster) -> Samples:
    assert cluster.coordinator is not None
    return scrape(cluster.coordinator.metrics_port)


def picture(seed: int, size: tuple[int, int] = (320, 240), fmt: str = "PNG") -> bytes:
    """A distinct synthetic picture: a few coloured blocks on a coloured background."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((size[1], size[0], 3), np.uint8)
    pixels[:] = rng.integers(0, 256, 3)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 60), rng.integers(0, size[1] - 60)
        pixels[y : y + rng.integers(40, 120), x : x + rng.integers(40, 160)] = rng.integers(0, 256, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def variant(data: bytes) -> bytes:
    """The same picture, smaller and re-encoded as JPEG (what a user's photo of a product looks like to us)."""
    with Image.open(io.BytesIO(data)) as img:
        smaller = img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4))
        out = io.BytesIO()
        smaller.save(out, "JPEG", quality=85)
    return out.getvalue()


def test_paraphrase_finds_its_source_sentence(stub: search_pb2_grpc.SearchServiceStub) -> None:
    """A few hundred real sentences indexed by text; each paraphrase query finds its source first."""
    rows = [json.loads(line) for line in SENTENCES.read_text().splitlines() if line.strip()]
    sentences = [r for r in rows if "paraphrase_of" not in r]
    paraphrases = [r for r in rows if "paraphrase_of" in r]
    assert len(sentences) >= 300 and len(paraphrases) >= 30
    create(stub, "sentences")
    for lo in range(0, len(sentences), 64):
        batch = sentences[lo : lo + 64]
        reply = stub.Upsert(pb.UpsertRequest(collection="sentences", items=[
            pb.Item(id=r["id"], text=r["text"], payload=r["text"].encode()) for r in batch
        ]), timeout=60)
        assert reply.upserted == len(batch)
    misses = []
    for p in paraphrases:
        reply = stub.SearchByText(pb.SearchByTextRequest(
            collection="sentences", text=p["text"], k=3, include_payload=True), timeout=30)
        if reply.hits[0].id != p["paraphrase_of"]:
            misses.append((p["text"], [h.payload.decode() for h in reply.hits]))
    assert not misses, misses
    # The stored vector is the model's embedding, L2-normalised for the inner-product collection.
    (item,) = stub.Get(pb.GetRequest(collection="sentences", ids=[sentences[0]["id"]])).items
    assert abs(np.linalg.norm(codec.unpack(item.vector_f32, TRITON_DIM)) - 1.0) < 1e-4
    encoded = stub.Encode(pb.EncodeRequest(texts=[sentences[0]["text"]], collection="sentences"))
    assert np.allclose(codec.unpack(encoded.embeddings[0].vector_f32, TRITON_DIM),
                       codec.unpack(item.vector_f32, TRITON_DIM), atol=1e-5)


def test_image_search_finds_the_original(stub: search_pb2_grpc.SearchServiceStub) -> None:
    create(stub, "photos")
    originals = {f"img-{i}": picture(i) for i in range(40)}
    stub.Upsert(pb.UpsertRequest(collection="photos", items=[
        pb.Item(id=key, image=data) for key, data in originals.items()
    ]), timeout=60)
    for key, data in originals.items():
        reply = stub.SearchByImage(pb.SearchByImageRequest(collection="photos", image=variant(data), k=2), timeout=30)
        assert reply.hits[0].id == key
        assert reply.hits[0].score > reply.hits[1].score


async def test_server_side_preprocessing_matches_the_coordinators(
    stub: search_pb2_grpc.SearchServiceStub, triton: TritonServer
) -> None:
    """Our client against the model that decodes images itself (BYTES input) agrees with the coordinator's
    client-side preprocessing for the pixel-tensor model."""
    from prometheus_client import CollectorRegistry

    from shardsearch.encoder_client import EncoderOptions, Encoders

    images = [picture(100 + i, size=(200 + 37 * i, 180)) for i in range(5)]
    with ThreadPoolExecutor(2) as executor:
        encoders = await Encoders.start(
            triton.url, {"image": TRITON_IMAGE_BYTES_MODEL}, EncoderOptions(), CollectorRegistry(), None, executor, 30,
        )
        try:
            encoder = encoders.get("image")
            assert encoder.server_side
            server_side = (await encoder.encode(images, "images", 30)).vectors
        finally:
            await encoders.close()
    reply = stub.Encode(pb.EncodeRequest(images=images))
    client_side = np.stack([codec.unpack(e.vector_f32, TRITON_DIM)[0] for e in reply.embeddings])
    cosine = np.sum(server_side * client_side, axis=1) / (
        np.linalg.norm(server_side, axis=1) * np.linalg.norm(client_side, axis=1))
    assert cosine.min() > 0.999, cosine


def test_bad_inputs_get_clear_statuses(stub: search_pb2_grpc.SearchServiceStub) -> None:
    create(stub, "checks")
    stub.Upsert(pb.UpsertRequest(collection="checks", items=[pb.Item(id="keep", text="a quiet lake at dawn")]))
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tiny, "PNG")
    truncated = picture(7)[:200]
    cases = [
        (stub.SearchByImage, pb.SearchByImageRequest(collection="checks", image=b"not an image", k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "image: not an image"),
        (stub.SearchByImage, pb.SearchByImageRequest(collection="checks", image=tiny.getvalue(), k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "at least 16"),
        (stub.SearchByImage, pb.SearchByImageRequest(collection="checks", image=truncated, k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "image:"),
        (stub.SearchByImage, pb.SearchByImageRequest(collection="checks", k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "image: the image is empty"),
        (stub.SearchByText, pb.SearchByTextRequest(collection="checks", text=" \n ", k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "text: the text is empty"),
        (stub.SearchByText, pb.SearchByTextRequest(collection="checks", text="word " * 3000, k=3),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 8192"),
        (stub.SearchByText, pb.SearchByTextRequest(collection="checks", text="fine", k=0),
         grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (stub.SearchByText, pb.SearchByTextRequest(collection="nope", text="fine", k=3),
         grpc.StatusCode.NOT_FOUND, "nope"),
        (stub.Upsert, pb.UpsertRequest(collection="checks", items=[
            pb.Item(id="both", text="a text", vector_f32=codec.pack(np.ones((1, TRITON_DIM), np.float32)))]),
         grpc.StatusCode.INVALID_ARGUMENT, "items[0]: set one of"),
        (stub.Upsert, pb.UpsertRequest(collection="checks", items=[
            pb.Item(id="ok", text="fine"), pb.Item(id="bad", image=b"garbage")]),
         grpc.StatusCode.INVALID_ARGUMENT, "items[1].image"),
        (stub.Encode, pb.EncodeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
    ]
    for call, request, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == code, (request, info.value.details())
        assert text in info.value.details(), (text, info.value.details())
    create(stub, "small", dim=16)
    with pytest.raises(grpc.RpcError) as info:
        stub.SearchByText(pb.SearchByTextRequest(collection="small", text="hello", k=3))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dim 16" in info.value.details() and "384" in info.value.details()
    # Nothing of the refused writes landed ("ok" shared a call with a bad image), and the stored item is intact.
    assert [i.id for i in stub.Get(pb.GetRequest(collection="checks", ids=["keep", "ok", "both", "bad"])).items] == [
        "keep"]
    assert stub.SearchByText(pb.SearchByTextRequest(collection="checks", text="lake at sunrise", k=1)).hits[0].id == "keep"


def test_hybrid_query_of_an_image_and_a_text(stub: search_pb2_grpc.SearchServiceStub) -> None:
    create(stub, "hybrid")
    photo = picture(500)
    stub.Upsert(pb.UpsertRequest(collection="hybrid", items=[
        pb.Item(id="photo", image=photo), pb.Item(id="fruit", text="a bowl of fresh fruit on a kitchen table"),
        pb.Item(id="car", text="a red sports car parked on the street"),
    ]))
    def top(weight_image: float, weight_text: float) -> str:
        reply = stub.SearchCombined(pb.CombinedSearchRequest(collection="hybrid", k=3, queries=[
            pb.WeightedQuery(image=variant(photo), weight=weight_image),
            pb.WeightedQuery(text="apples and bananas in a dish", weight=weight_text),
        ]))
        return reply.hits[0].id
    assert top(1.0, 0.01) == "photo"
    assert top(0.01, 1.0) == "fruit"
    reply = stub.SearchCombined(pb.CombinedSearchRequest(collection="hybrid", k=3, combine=pb.COMBINE_RRF, queries=[
        pb.WeightedQuery(image=variant(photo)), pb.WeightedQuery(text="a crimson coupe on a city road"),
    ]))
    assert {h.id for h in reply.hits[:2]} == {"photo", "car"}


def test_embedding_cache_in_redis(stub: search_pb2_grpc.SearchServiceStub, cluster: LocalCluster,
                                  redis: RedisServer) -> None:
    texts = [f"an unusual sentence number {i} about lighthouses" for i in range(5)]
    first = stub.Encode(pb.EncodeRequest(texts=texts))
    again = stub.Encode(pb.EncodeRequest(texts=[f"  {texts[0]}\n", *texts[1:]]))  # same after normalisation
    assert [e.cached for e in first.embeddings] == [False] * 5
    assert [e.cached for e in again.embeddings] == [True] * 5
    assert [e.vector_f32 for e in first.embeddings] == [e.vector_f32 for e in again.embeddings]
    image = picture(900)
    assert [e.cached for e in stub.Encode(pb.EncodeRequest(images=[image, image])).embeddings] == [False, False]
    assert stub.Encode(pb.EncodeRequest(images=[image])).embeddings[0].cached
    # Redis stops answering: encoding still works, uncached, well within the deadline.
    redis.signal(signal.SIGSTOP)
    try:
        reply = stub.Encode(pb.EncodeRequest(texts=texts[:2]), timeout=5)
        assert [e.cached for e in reply.embeddings] == [False, False]
        assert reply.embeddings[0].vector_f32 == first.embeddings[0].vector_f32
    finally:
        redis.signal(signal.SIGCONT)
    values = metrics(cluster)
    assert metric_sum(values, "shardsearch_encoder_cache_lookups_total", result="hit") >= 6
    assert metric_sum(values, "shardsearch_encoder_cache_errors_total") >= 1
    deadline = time.monotonic() + 10
    while not stub.Encode(pb.EncodeRequest(texts=texts[:1])).embeddings[0].cached:  # back on after retry_s
        assert time.monotonic() < deadline, "embedding cache did not come back after Redis resumed"
        time.sleep(0.2)


def test_concurrent_requests_share_infer_calls(stub: search_pb2_grpc.SearchServiceStub,
                                               cluster: LocalCluster) -> None:
    create(stub, "batched")
    stub.Upsert(pb.UpsertRequest(collection="batched", items=[pb.Item(id="x", text="a harbour full of boats")]))
    before = metrics(cluster)
    texts = [f"query {i}: boats in a harbour at {i} o'clock" for i in range(48)]
    futures = [stub.SearchByText.future(pb.SearchByTextRequest(collection="batched", text=t, k=1, skip_cache=True),
                                        timeout=60) for t in texts]
    assert all(f.result().hits[0].id == "x" for f in futures)
    after = metrics(cluster)
    calls = (metric_sum(after, "shardsearch_encoder_infer_requests_total", code="OK")
             - metric_sum(before, "shardsearch_encoder_infer_requests_total", code="OK"))
    embedded = (metric_sum(after, "shardsearch_encoder_items_total", source="model")
                - metric_sum(before, "shardsearch_encoder_items_total", source="model"))
    assert embedded == 48
    assert 1 <= calls < 48, calls  # concurrent requests were gathered into fewer infer calls


def test_a_stalled_triton_gives_deadline_exceeded_not_a_hang(stub: search_pb2_grpc.SearchServiceStub,
                                                             triton: TritonServer) -> None:
    create(stub, "stall")
    stub.Upsert(pb.UpsertRequest(collection="stall", items=[pb.Item(id="v", vector_f32=codec.pack(
        np.ones((1, TRITON_DIM), np.float32)))]))
    triton.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchByText(pb.SearchByTextRequest(collection="stall", text="never cached before", k=1), timeout=2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 10
        # Vector search does not depend on the encoder.
        vector = codec.pack(np.ones((1, TRITON_DIM), np.float32))
        assert stub.Search(pb.SearchRequest(collection="stall", vector_f32=vector, k=1), timeout=5).hits[0].id == "v"
    finally:
        triton.signal(signal.SIGCONT)
    reply = stub.SearchByText(pb.SearchByTextRequest(collection="stall", text="works again", k=1), timeout=30)
    assert reply.hits[0].id == "v"


def test_a_model_that_is_not_ready(triton: TritonServer, tmp_path: Path) -> None:
    """Not ready within encoder_wait_s: the coordinator serves and says which model is missing; with
    --encoder-required it exits, naming it."""
    args = ["--encoder-url", triton.url, "--text-model", "no_such_model", "--encoder-wait-s", "1"]
    with LocalCluster(shards=1, coordinator_args=args) as running:
        stub = connect(running)
        create(stub, "c", dim=4)
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchByText(pb.SearchByTextRequest(collection="c", text="hello", k=1), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no_such_model" in info.value.details() and triton.url in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchByImage(pb.SearchByImageRequest(collection="c", image=picture(1), k=1), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--image-model" in info.value.details()
        shard = running.shard_procs[0].address
    proc = subprocess.run(
        [sys.executable, "-m", "shardsearch.coordinator", "--port", "0", "--metrics-port", "-1", "--shards", shard, *args,
         "--encoder-required"], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "no_such_model" in proc.stderr and "not ready" in proc.stderr


async def test_ingest_texts_and_images_through_the_encoder(cluster: LocalCluster,
                                                           stub: search_pb2_grpc.SearchServiceStub,
                                                           tmp_path: Path) -> None:
    """`shardsearch ingest` of a JSONL of texts and of an image folder into new collections: --create without a dim
    learns it from the coordinator's Encode, the items land searchable by text and by image, an undecodable image
    fails alone with INVALID_ARGUMENT, and a second run skips everything."""
    from shardsearch.tools.ingest import ingest

    rows = [json.loads(line) for line in SENTENCES.read_text().splitlines() if line.strip()]
    by_id = {r["id"]: r for r in rows if "paraphrase_of" not in r}
    paraphrases = [r for r in rows if "paraphrase_of" in r][:20]
    chosen = list(dict.fromkeys([p["paraphrase_of"] for p in paraphrases] + list(by_id)))[:60]
    (tmp_path / "texts.jsonl").write_text("".join(
        json.dumps({"id": i, "text": by_id[i]["text"], "payload": {"n": n}}) + "\n" for n, i in enumerate(chosen)))
    texts = await ingest(cluster.address, "ingested_texts", tmp_path / "texts.jsonl", create=True, metric="ip",
                         batch_size=16)
    assert (texts.done, texts.skipped, texts.failed) == (60, 0, 0), texts.text()
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="ingested_texts"), timeout=10)
    assert (info.collection.dim, info.collection.metric, info.total_vectors) == (
        TRITON_DIM, pb.METRIC_INNER_PRODUCT, 60)
    for p in paraphrases:
        reply = stub.SearchByText(pb.SearchByTextRequest(
            collection="ingested_texts", text=p["text"], k=3, include_payload=True), timeout=30)
        assert reply.hits[0].id == p["paraphrase_of"], (p["text"], [h.id for h in reply.hits])
        assert reply.hits[0].payload == f'{{"n":{chosen.index(p["paraphrase_of"])}}}'.encode()

    folder = tmp_path / "pics"
    (folder / "more").mkdir(parents=True)
    seeds = {f"{'more/' if seed % 3 == 0 else ''}img-{seed:02d}.png": 700 + seed for seed in range(12)}
    for name, seed in seeds.items():
        (folder / name).write_bytes(picture(seed))
    (folder / "0-broken.jpg").write_bytes(np.random.default_rng(5).bytes(3000))  # sorts first: dim learned past it
    images = await ingest(cluster.address, "ingested_images", folder, create=True, metric="ip")
    assert (images.done, images.skipped, images.failed) == (12, 0, 1), images.text()
    (group,) = images.failures.values()
    assert group.examples == ["0-broken.jpg"]
    assert group.reason.startswith("INVALID_ARGUMENT: ") and "image" in group.reason, group.reason
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="ingested_images"), timeout=10)
    assert (info.collection.dim, info.total_vectors) == (TRITON_DIM, 12)
    for name, seed in seeds.items():
        reply = stub.SearchByImage(pb.SearchByImageRequest(
            collection="ingested_images", image=variant(picture(seed)), k=2, include_payload=True), timeout=30)
        assert reply.hits[0].id == name
        assert json.loads(reply.hits[0].payload) == {"path": name}

    again = await ingest(cluster.address, "ingested_texts", tmp_path / "texts.jsonl", create=True)
    assert (again.done, again.skipped, again.failed) == (0, 60, 0), again.text()
    again = await ingest(cluster.address, "ingested_images", folder, create=True)
    assert (again.done, again.skipped, again.failed) == (0, 12, 1), again.text()


def test_a_model_that_comes_up_later_is_connected_in_the_background(triton: TritonServer, tmp_path: Path) -> None:
    """The coordinator starts before Triton: image calls answer UNAVAILABLE, then work once the model is ready."""
    port = free_port()
    args = ["--encoder-url", f"127.0.0.1:{port}", "--image-model", "tiny_image", "--encoder-wait-s", "0.5"]
    with LocalCluster(shards=1, coordinator_args=args) as running:
        stub = connect(running)
        create(stub, "late")
        stub.Upsert(pb.UpsertRequest(collection="late", items=[pb.Item(id="v", vector_f32=codec.pack(
            np.ones((1, TRITON_DIM), np.float32)))]))
        request = pb.SearchByImageRequest(collection="late", image=picture(3), k=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchByImage(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "tiny_image" in info.value.details()
        with TritonServer(grpc_port=port, text_model=False, log_path=tmp_path / "late-triton.log"):
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert stub.SearchByImage(request, timeout=10).hits[0].id == "v"
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    assert time.monotonic() < deadline, "the model was not connected after Triton came up"
                    time.sleep(0.5)


def test_offline_evaluation_of_text_queries(stub: search_pb2_grpc.SearchServiceStub, cluster: LocalCluster,
                                            tmp_path: Path) -> None:
    """`shardsearch eval` sends text queries to SearchByText: each paraphrase's source is its one relevant item."""
    from shardsearch.tools import evaluate

    rows = [json.loads(line) for line in SENTENCES.read_text().splitlines() if line.strip()]
    if "sentences" not in [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]:
        test_paraphrase_finds_its_source_sentence(stub)
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(
        json.dumps({"query_id": r["id"], "text": r["text"], "relevant": [r["paraphrase_of"]]}) + "\n"
        for r in rows if "paraphrase_of" in r
    ))
    config = evaluate.EvalConfig(address=cluster.address, collection="sentences", queries=str(queries), k=10, at=(1, 10))
    result = asyncio.run(evaluate.run_eval(config))
    assert result.evaluated == sum("paraphrase_of" in r for r in rows) and not result.errors
    assert result.metrics[1].recall == 1.0 and result.metrics[10].reciprocal_rank == 1.0
