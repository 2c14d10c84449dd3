"""export, drop, import: the same items (vectors bit for bit, payloads, fields) and the same answers, on a
multi-shard cluster and into a cluster of another shard count; an interrupted export resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shardsearch import client as sc
from shardsearch.tools import cli
from shardsearch.tools.local import LocalCluster

DIM = 12
N = 1500


def answers(client: sc.Client, name: str, queries: np.ndarray) -> list[list[tuple[str, bytes]]]:
    rows = client.search(name, queries, k=10, filter=sc.match("kind", "b", "c"), include_payload=True)
    return [[(h.id, h.payload) for h in row] for row in rows]


def test_export_drop_import_gives_the_same_items_and_answers_on_any_shard_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(8)
    ids = [f"item-{i}" for i in range(N)]
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    payloads = [f"payload {i}".encode() for i in range(N)]
    fields: list[dict[str, sc.FieldValue]] = [{"kind": "abc"[i % 3], "rank": i} for i in range(N)]
    queries = rng.standard_normal((100, DIM)).astype(np.float32)
    out = tmp_path / "src.jsonl"
    with LocalCluster(shards=3) as cluster, sc.Client(cluster.address, timeout=30) as client:
        client.create_collection("src", DIM, "l2")
        client.upsert("src", ids, vectors, payloads=payloads, fields=fields)
        before = answers(client, "src", queries)

        # An export cut short after three pages, then resumed from its progress file.
        real_get, calls = sc.Client.get, []

        def failing_get(self: sc.Client, collection: str, page: list[str], **kwargs: object) -> list[sc.Item]:
            calls.append(len(page))
            if len(calls) == 4:
                raise sc.Unavailable("the test cut the export short")
            return real_get(self, collection, page)

        monkeypatch.setattr(sc.Client, "get", failing_get)
        with pytest.raises(SystemExit):
            cli.main(["export", "--address", cluster.address, "--collection", "src", "--out", str(out),
                      "--page-size", "200", "--quiet"])
        assert json.loads(out.with_name("src.jsonl.progress").read_text())["items"] == 600
        monkeypatch.setattr(sc.Client, "get", real_get)
        cli.main(["export", "--address", cluster.address, "--collection", "src", "--out", str(out),
                  "--page-size", "200", "--quiet", "--resume"])
        assert not out.with_name("src.jsonl.progress").exists()
        lines = out.read_text().splitlines()
        assert len(lines) == N + 1 and len({json.loads(line)["id"] for line in lines[1:]}) == N

        client.drop_collection("src")
        cli.main(["import", "--address", cluster.address, "--in", str(out), "--quiet"])
        assert client.describe("src").total_vectors == N
        assert answers(client, "src", queries) == before
        (item,) = client.get("src", ["item-7"])
        assert np.array_equal(item.vector, vectors[7]) and item.payload == payloads[7]
        assert item.fields == {"kind": "b", "rank": 7.0}

    with LocalCluster(shards=2) as other, sc.Client(other.address, timeout=30) as client:
        cli.main(["import", "--address", other.address, "--in", str(out), "--collection", "copy", "--quiet"])
        assert client.describe("copy").total_vectors == N
        assert answers(client, "copy", queries) == before
