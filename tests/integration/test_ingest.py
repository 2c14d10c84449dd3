"""`shardsearch ingest` against a real 2-shard cluster: exact vectors land, reruns resume, bad items are isolated by
bisection against the server's own validation, and the command's exit codes and --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.ingest import IngestSummary, ingest
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, search_pb2_grpc
from tests.integration.conftest import running_cluster

N = 3000
DIM = 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards without write-ahead logs (this module never restarts one); logs printed if a test fails."""
    with running_cluster(request, shards=2, durable=False) as running:
        yield running


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    vectors = np.random.default_rng(21).standard_normal((N, DIM)).astype(np.float32)
    path = tmp_path_factory.mktemp("ingest") / "base.npy"
    np.save(path, vectors)
    return path, vectors


def stored(stub: search_pb2_grpc.SearchServiceStub, collection: str, ids: list[str]) -> dict[str, search_pb2.Item]:
    found = {}
    for lo in range(0, len(ids), 1000):
        response = stub.Get(search_pb2.GetRequest(collection=collection, ids=ids[lo:lo + 1000]))
        found.update((item.id, item) for item in response.items)
    return found


def assert_exact(stub: search_pb2_grpc.SearchServiceStub, collection: str, vectors: np.ndarray) -> None:
    items = stored(stub, collection, [str(i) for i in range(len(vectors))])
    assert len(items) == len(vectors)
    got = np.stack([codec.unpack(items[str(i)].vector_f32, vectors.shape[1])[0] for i in range(len(vectors))])
    assert np.array_equal(got, vectors)


async def test_vectors_land_exactly_and_a_rerun_skips_them_all(cluster, stub, base) -> None:
    path, vectors = base
    summary = await ingest(cluster.address, "bulk", path, create=True, concurrency=4)
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (N, 0, 0, 0)
    assert summary.items_per_s > 0 and summary.address == cluster.address
    info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name="bulk"))
    assert (info.collection.dim, info.collection.metric, info.total_vectors) == (DIM, search_pb2.METRIC_L2, N)
    assert_exact(stub, "bulk", vectors)
    hits = stub.Search(search_pb2.SearchRequest(collection="bulk", vector_f32=codec.pack(vectors[1234]), k=3)).hits
    assert hits[0].id == "1234" and hits[0].score == 0.0

    again = await ingest(cluster.address, "bulk", path)
    assert (again.done, again.skipped, again.failed) == (0, N, 0)
    overwritten = await ingest(cluster.address, "bulk", path, overwrite=True, batch_size=1000)
    assert (overwritten.done, overwritten.skipped) == (N, 0)


async def test_an_interrupted_load_resumes_where_it_stopped(cluster, stub, base, tmp_path: Path) -> None:
    path, vectors = base
    np.save(tmp_path / "first-half.npy", vectors[: N // 2])  # what an interrupted run had sent
    first = await ingest(cluster.address, "resumed", tmp_path / "first-half.npy", create=True, batch_size=100)
    assert (first.done, first.skipped) == (N // 2, 0)
    rest = await ingest(cluster.address, "resumed", path, batch_size=100)
    assert (rest.done, rest.skipped, rest.failed) == (N - N // 2, N // 2, 0)
    assert_exact(stub, "resumed", vectors)


async def test_bad_items_are_isolated_by_the_server_and_the_good_ones_land(cluster, stub, tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    lines = [json.dumps({"id": f"j{i}", "vector": vectors[i].tolist(), "payload": {"n": i}}) for i in range(60)]
    lines[37] = json.dumps({"id": "j37", "vector": vectors[37].tolist()[:7]})  # wrong dimension
    lines.insert(10, '{"id": "torn", "vector": [1,')  # a malformed line: line 11
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")

    summary = await ingest(cluster.address, "mixed", tmp_path / "items.jsonl", create=True, batch_size=16)
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (59, 0, 2, 1)
    groups = {group.reason: group for group in summary.failures.values()}
    invalid = [g for reason, g in groups.items() if reason.startswith("INVALID_ARGUMENT")]
    assert len(invalid) == 1 and invalid[0].examples == ["j37"] and invalid[0].count == 1
    assert "vector_f32: 28 bytes, expected 32" in invalid[0].reason  # the server's own message
    assert [g.examples for reason, g in groups.items() if reason.startswith("line 11: not JSON")] == [["line 11"]]

    items = stored(stub, "mixed", [f"j{i}" for i in range(60)])
    assert sorted(items) == sorted(f"j{i}" for i in range(60) if i != 37)
    assert codec.unpack(items["j5"].vector_f32, 8)[0].tolist() == vectors[5].tolist()
    assert items["j5"].payload == b'{"n":5}'


async def test_text_and_image_items_without_an_encoder_fail_cleanly(cluster, stub, tmp_path: Path) -> None:
    """Until the coordinator has an encoder configured, every text or image item fails with FAILED_PRECONDITION (or,
    before the coordinator understands Item.text and Item.image, INVALID_ARGUMENT for a missing vector), each
    reported under its id, and nothing is stored."""
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": f"item number {i}"}) + "\n"
                                                  for i in range(5)))
    texts = await ingest(cluster.address, "words", tmp_path / "texts.jsonl", create=True, dim=8)
    assert_failed_without_encoder(texts, [f"t{i}" for i in range(5)])

    from PIL import Image

    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.PNG", "sub/c.jpg"]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / "pics" / name, format="PNG")
    images = await ingest(cluster.address, "words", tmp_path / "pics")
    assert_failed_without_encoder(images, ["a.png", "sub/b.PNG", "sub/c.jpg"])
    assert not stored(stub, "words", [f"t{i}" for i in range(5)] + ["a.png", "sub/b.PNG", "sub/c.jpg"])


def assert_failed_without_encoder(summary: IngestSummary, ids: list[str]) -> None:
    assert (summary.done, summary.failed, summary.exit_code) == (0, len(ids), 1)
    assert sorted(i for group in summary.failures.values() for i in group.examples) == sorted(ids)
    for reason in summary.failures:
        assert reason.startswith(("FAILED_PRECONDITION: ", "INVALID_ARGUMENT: ")), reason


def shardsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardsearch.tools.cli", "ingest", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_command_exit_codes_and_json(cluster, stub, base, tmp_path: Path) -> None:
    _, vectors = base
    dims = np.full((200, 1), DIM, dtype="<i4")
    np.hstack([dims, vectors[:200].view("<i4")]).tofile(tmp_path / "v.fvecs")
    (tmp_path / "ids.txt").write_text("".join(f"f{i}\n" for i in range(200)))
    common = ["--address", cluster.address, "--no-progress"]

    missing = shardsearch(*common, "--collection", "cli", "--vectors", str(tmp_path / "v.fvecs"))
    assert missing.returncode == 2 and "collection 'cli' does not exist (pass --create" in missing.stderr

    ok = shardsearch(*common, "--collection", "cli", "--vectors", str(tmp_path / "v.fvecs"), "--ids",
                     str(tmp_path / "ids.txt"), "--create", "--metric", "ip", "--vector-store", "sq8", "--json", "-")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert (doc["done"], doc["skipped"], doc["failed"], doc["failures"]) == (200, 0, 0, [])
    assert doc["collection"] == "cli" and doc["elapsed_s"] > 0 and "200 done" in ok.stderr
    info = stub.DescribeCollection(search_pb2.DescribeCollectionRequest(name="cli"))
    assert (info.collection.metric, info.total_vectors) == (search_pb2.METRIC_INNER_PRODUCT, 200)
    assert info.collection.index.vector_store == search_pb2.VECTOR_STORE_SQ8

    bad = [{"id": "f0", "vector": vectors[0].tolist()}, {"id": "short", "vector": [1.0, 2.0]},
           {"id": "new", "vector": vectors[300].tolist(), "payload": ["x"]}]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(item) + "\n" for item in bad))
    partial = shardsearch(*common, "--collection", "cli", "--texts", str(tmp_path / "more.jsonl"),
                          "--json", str(tmp_path / "out.json"))
    assert partial.returncode == 1, partial.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert (doc["done"], doc["skipped"], doc["failed"]) == (1, 1, 1)
    assert doc["failures"][0]["examples"] == ["short"] and doc["failures"][0]["reason"].startswith("INVALID_ARGUMENT")
    assert "1 done, 1 skipped (already stored), 1 failed" in partial.stdout

    unreachable = shardsearch("--address", "127.0.0.1:1", "--collection", "cli", "--timeout", "1",
                              "--vectors", str(tmp_path / "v.fvecs"))
    assert unreachable.returncode == 2 and "could not connect" in unreachable.stderr


def test_create_without_dim_needs_the_encoder(cluster, stub, tmp_path: Path) -> None:
    """--create of texts or images without --dim learns the dimension from the coordinator's Encode: with no encoder
    (this cluster) that is a fatal error, exit 2 with the coordinator's FAILED_PRECONDITION, and nothing is created."""
    (tmp_path / "texts.jsonl").write_text(json.dumps({"id": "t0", "text": "a red bicycle"}) + "\n")
    common = ["--address", cluster.address, "--no-progress", "--create"]
    texts = shardsearch(*common, "--collection", "learned", "--texts", str(tmp_path / "texts.jsonl"))
    assert texts.returncode == 2, texts.stderr
    assert "FAILED_PRECONDITION: no text model is configured" in texts.stderr and "--dim" in texts.stderr
    from PIL import Image

    (tmp_path / "pics").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "pics" / "a.png")
    images = shardsearch(*common, "--collection", "learned", "--images", str(tmp_path / "pics"))
    assert images.returncode == 2 and "FAILED_PRECONDITION: no image model is configured" in images.stderr
    listed = stub.ListCollections(search_pb2.ListCollectionsRequest())
    assert "learned" not in {c.name for c in listed.collections}
