"""The Python client (shardsearch.client) against a real cluster: every call, numpy in and out, filters without
protobuf, the exception tree, and an install-light import."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from shardsearch import client as sc
from shardsearch.tools.local import LocalCluster

DIM = 16
N = 300


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(shards=2) as running:
        yield running


def data() -> tuple[list[str], np.ndarray, list[bytes], list[dict[str, sc.FieldValue]]]:
    ids = [f"id{i}" for i in range(N)]
    vectors = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
    payloads = [f"p{i}".encode() for i in range(N)]
    fields: list[dict[str, sc.FieldValue]] = [
        {"kind": "even" if i % 2 == 0 else "odd", "n": i, "tags": ["all", f"t{i % 3}"]} for i in range(N)]
    return ids, vectors, payloads, fields


def exact(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray | None = None, k: int = 10) -> list[str]:
    distances = ((vectors - query) ** 2).sum(1)
    if mask is not None:
        distances = np.where(mask, distances, np.inf)
    order = np.argsort(distances, kind="stable")[:k]
    return [f"id{i}" for i in order if np.isfinite(distances[i])]


def test_the_blocking_client_does_every_call(cluster: LocalCluster) -> None:
    ids, vectors, payloads, fields = data()
    with sc.Client(cluster.address) as client:
        spec = client.create_collection("c", DIM, "l2")
        assert spec.name == "c" and spec.dim == DIM
        assert client.upsert("c", ids, vectors, payloads=payloads, fields=fields, batch_size=128) == N
        assert [c.name for c in client.list_collections()] == ["c"]
        assert client.describe("c").total_vectors == N

        hits = client.search("c", vectors[7], k=10, include_payload=True)
        assert [h.id for h in hits] == exact(vectors, vectors[7])
        assert hits[0].payload == b"p7" and hits[0].fields == {"kind": "odd", "n": 7.0, "tags": ["all", "t1"]}
        many = client.search("c", vectors[:5], k=3)
        assert [[h.id for h in row] for row in many] == [exact(vectors, q, k=3) for q in vectors[:5]]

        evens_over_100 = sc.all_of(sc.match("kind", "even"), sc.number_range("n", gt=100))
        mask = np.array([i % 2 == 0 and i > 100 for i in range(N)])
        filtered = client.search("c", vectors[0], k=10, filter=evens_over_100)
        assert [h.id for h in filtered] == exact(vectors, vectors[0], mask)
        assert all(h.id != "id7" for h in client.search_by_id("c", "id7", k=5))

        (item,) = client.get("c", ["id9", "missing"])
        assert item.id == "id9" and np.array_equal(item.vector, vectors[9]) and item.payload == b"p9"
        assert client.delete("c", ["id9", "missing"]) == 1
        assert sorted(client.list_ids("c", page_size=37)) == sorted(set(ids) - {"id9"})

        with pytest.raises(sc.NotFound, match="nope"):
            client.search("nope", vectors[0])
        with pytest.raises(sc.InvalidArgument) as bad:
            client.search("c", np.zeros(DIM + 1, np.float32))
        assert bad.value.code.name == "INVALID_ARGUMENT" and "expected 64" in bad.value.details
        with pytest.raises(sc.AlreadyExists):
            client.create_collection("c", DIM)
        with pytest.raises(ValueError, match="ids for"):
            client.upsert("c", ids[:2], vectors[:3])
        client.drop_collection("c")
        assert client.list_collections() == []


async def test_the_async_client_does_the_same(cluster: LocalCluster) -> None:
    ids, vectors, payloads, fields = data()
    async with sc.AsyncClient(cluster.address) as client:
        await client.create_collection("a", DIM, "l2")
        assert await client.upsert("a", ids, vectors, payloads=payloads, fields=fields) == N
        hits = await client.search("a", vectors[3], k=5)
        assert [h.id for h in hits] == exact(vectors, vectors[3], k=5)
        rows = await client.search("a", vectors[:4], k=2, filter=sc.match("tags", "t0"))
        mask = np.array([i % 3 == 0 for i in range(N)])
        assert [[h.id for h in row] for row in rows] == [exact(vectors, q, mask, k=2) for q in vectors[:4]]
        assert [item.id for item in await client.get("a", ["id1", "id2"])] == ["id1", "id2"]
        assert await client.delete("a", ["id1"]) == 1
        assert len([i async for i in client.list_ids("a", page_size=50)]) == N - 1
        with pytest.raises(sc.NotFound):
            await client.get("nope", ["x"])
        await client.drop_collection("a")


def test_a_matrix_larger_than_one_call_is_split(cluster: LocalCluster) -> None:
    ids, vectors, _, _ = data()
    queries = np.random.default_rng(4).standard_normal((2500, DIM)).astype(np.float32)
    with sc.Client(cluster.address, timeout=60) as client:
        client.create_collection("split", DIM)
        client.upsert("split", ids, vectors)
        rows = client.search("split", queries, k=1)
        assert len(rows) == 2500 and [h.id for h in rows[-1]] == exact(vectors, queries[-1], k=1)
        client.drop_collection("split")


def test_the_client_imports_no_faiss_tritonclient_or_pillow() -> None:
    code = ("import sys, shardsearch.client; heavy = [m for m in ('faiss', 'tritonclient', 'PIL') if m in sys.modules];"
            " print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_service_config_is_the_clients() -> None:
    shipped = json.loads((Path(__file__).parents[2] / "docs" / "service_config.json").read_text())
    assert shipped == sc.SERVICE_CONFIG


def test_settings_that_cannot_work_say_which(tmp_path: Path) -> None:
    for kwargs, message in (
        ({"cert_file": "c.pem"}, "needs both its certificate and its key file"),
        ({"server_name": "localhost"}, "a TLS server name needs TLS"),
        ({"ca_file": str(tmp_path / "missing.pem")}, "cannot read TLS CA file"),
        ({"token_file": str(tmp_path / "missing")}, "cannot read token file"),
    ):
        with pytest.raises(sc.SettingsError, match=message):
            sc.Client("127.0.0.1:1", **kwargs)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(sc.SettingsError, match="is empty"):
        sc.AsyncClient("127.0.0.1:1", token_file=str(tmp_path / "empty"))
    (tmp_path / "tokens").write_text("\n  first-token read\nsecond admin\n")
    assert sc.read_token(str(tmp_path / "tokens")) == "first-token"


def test_wait_ready_names_the_target_it_cannot_reach(cluster: LocalCluster) -> None:
    with sc.Client(cluster.address) as client:
        client.wait_ready(10)
    with sc.Client("127.0.0.1:1") as client, pytest.raises(sc.Unavailable, match="could not connect to 127.0.0.1:1"):
        client.wait_ready(0.2)

    async def check() -> None:
        async with sc.AsyncClient(cluster.address) as client:
            await client.wait_ready(10)
        async with sc.AsyncClient("127.0.0.1:1") as client:
            with pytest.raises(sc.Unavailable, match="within 0.2 s"):
                await client.wait_ready(0.2)

    asyncio.run(check())


def test_without_retries_the_channel_has_no_retry_policy() -> None:
    options = dict(sc.channel_options(retries=False))
    assert options["grpc.enable_retries"] == 0
    assert json.loads(options["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert dict(sc.channel_options())["grpc.enable_retries"] == 1
