"""`shardsearch eval` against a real 2-shard cluster: exact answers score 1, and every number matches one computed here.

The collection is far below its train threshold, so every shard searches its fresh buffer exactly and the ground
truth numpy computes is what the cluster must return, in the same order.
The id-query test needs the SearchById RPC on the coordinator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from shardsearch.tools import cli
from shardsearch.tools.evaluate import EvalConfig, load_queries, run_eval
from shardsearch.tools.local import LocalCluster
from tests.integration.conftest import create, running_cluster, upsert

NAME = "evalset"
DIM = 16
N = 300
KS = (1, 5, 10)
PARTIAL_POSITIONS = (0, 3, 8, 20)
"""Relevant ids of the 'partial' queries: the true neighbours at these 0-based positions (20 lies beyond k=10)."""


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Two shards without write-ahead logs (this module never restarts one); logs printed if a test fails."""
    with running_cluster(request, shards=2, durable=False) as running:
        yield running


@pytest.fixture(scope="module")
def base(stub) -> np.ndarray:
    """N random vectors stored as ids v0..v299 in an exact (untrained) L2 collection."""
    vectors = np.random.default_rng(9).standard_normal((N, DIM)).astype(np.float32)
    create(stub, NAME, DIM)
    upsert(stub, NAME, [f"v{i}" for i in range(N)], vectors)
    return vectors


def neighbours(base: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row indices of `base` by increasing squared L2 distance to `query` (float64), checked free of near-ties."""
    distances = ((base.astype(np.float64) - query.astype(np.float64)) ** 2).sum(axis=1)
    order = np.argsort(distances)
    assert np.diff(distances[order[:25]]).min() > 1e-4, "near-tie in the ground truth: pick another seed"
    return order


def expected(positions: list[int], n_relevant: int, k: int) -> dict[str, float]:
    """The metrics of a query whose relevant ids sit at these 0-based positions of the answer (an independent sum)."""
    ranks = [p + 1 for p in sorted(positions) if p < k]
    return {
        "recall": len(ranks) / n_relevant, "precision": len(ranks) / k,
        "map": sum((i + 1) / r for i, r in enumerate(ranks)) / min(n_relevant, k),
        "mrr": 1 / ranks[0] if ranks else 0.0,
    }


def write_jsonl(path: Path, queries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in queries))
    return path


@pytest.fixture(scope="module")
def vector_set(base: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """10 queries labelled with their exact top 10, 10 with 4 true neighbours (3 within k=10), one whose relevant id
    does not exist, one with no relevant ids and one text query; and the per-query metrics each must get."""
    rng = np.random.default_rng(10)
    queries, want = [], {}
    for i, vector in enumerate(rng.standard_normal((20, DIM)).astype(np.float32)):
        order = neighbours(base, vector)
        positions = list(range(10)) if i < 10 else list(PARTIAL_POSITIONS)
        query_id = f"{'exact' if i < 10 else 'partial'}-{i}"
        queries.append({"query_id": query_id, "vector": [float(x) for x in vector],
                        "relevant": [f"v{order[p]}" for p in positions]})
        want[query_id] = {str(k): expected(positions, len(positions), k) for k in KS}
    queries.append({"query_id": "absent", "vector": [float(x) for x in base[0]], "relevant": ["no-such-item"]})
    want["absent"] = {str(k): {"recall": 0.0, "precision": 0.0, "map": 0.0, "mrr": 0.0} for k in KS}
    queries.append({"query_id": "unlabelled", "vector": [0.0] * DIM, "relevant": []})
    queries.append({"query_id": "words", "text": "a red shoe", "relevant": ["v1"]})
    return write_jsonl(tmp_path_factory.mktemp("eval") / "queries.jsonl", queries), want


def test_command_reports_exact_recall_and_the_numbers_computed_here(
    cluster, vector_set, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, want = vector_set
    out = tmp_path / "result.json"
    cli.main(["eval", "--address", cluster.address, "--collection", NAME, "--queries", str(path), "--k", "10",
              "--at", "1,5,10", "--concurrency", "4", "--skip-cache", "--json", str(out), "--per-query"])
    result = json.loads(out.read_text())
    assert (result["queries"], result["evaluated"], result["skipped"], result["failed"]) == (23, 21, 1, 1)
    # The text query went to SearchByText, and this cluster has no text model.
    assert list(result["errors"]) == ["FAILED_PRECONDITION"] and result["errors"]["FAILED_PRECONDITION"]["count"] == 1
    assert "no text model is configured" in result["errors"]["FAILED_PRECONDITION"]["example"]
    per_query = {q["query_id"]: q for q in result["per_query"]}
    for query_id, metrics in want.items():
        for k in map(str, KS):
            assert per_query[query_id]["metrics"][k] == pytest.approx(metrics[k]), (query_id, k)
    for i in range(10):
        assert per_query[f"exact-{i}"]["metrics"]["10"]["recall"] == 1.0
    assert per_query["absent"]["metrics"]["10"]["recall"] == 0.0
    assert (per_query["unlabelled"]["status"], per_query["words"]["status"]) == ("skipped", "failed")
    for k in map(str, KS):
        for name in ("recall", "precision", "map", "mrr"):
            mean = sum(metrics[k][name] for metrics in want.values()) / len(want)
            assert result["metrics"][k][name] == pytest.approx(mean, abs=1e-12), (k, name)
    assert result["settings"]["k"] == 10 and result["settings"]["ks"] == [1, 5, 10]
    table = capsys.readouterr().out
    assert "23 queries: 21 evaluated, 1 skipped (no relevant ids), 1 failed" in table
    assert "Recall@K" in table and "failed: FAILED_PRECONDITION x1" in table


async def test_runner_scores_the_exact_queries_alone(cluster, vector_set) -> None:
    path, _ = vector_set
    exact = [q for q in load_queries(path) if q.query_id.startswith("exact-")]
    result = await run_eval(EvalConfig(address=cluster.address, collection=NAME, k=10, at=(10, 100)), exact)
    assert (result.queries, result.evaluated, result.failed, result.errors) == (10, 10, 0, {})
    assert result.settings["ks"] == [10]  # 100 capped at k
    assert result.metrics[10].recall == 1.0 and result.metrics[10].precision == 1.0
    assert result.metrics[10].average_precision == 1.0 and result.metrics[10].reciprocal_rank == 1.0


def test_command_exits_1_when_every_query_fails(cluster, vector_set, tmp_path: Path) -> None:
    path, _ = vector_set
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--address", cluster.address, "--collection", "missing", "--queries", str(path),
                  "--json", str(out)])
    assert exit_.value.code == 1
    result = json.loads(out.read_text())
    assert result["evaluated"] == 0 and result["metrics"] == {}
    assert result["errors"]["NOT_FOUND"]["count"] == 22  # the text query too


async def test_id_queries_exclude_the_item_and_find_its_neighbours(cluster, base, tmp_path: Path) -> None:
    """Needs the SearchById RPC (issue 9): fails with UNIMPLEMENTED counted in `errors` until the coordinator has it."""
    queries = []
    for i in (0, 17, 123, 299):
        order = [int(j) for j in neighbours(base, base[i]) if j != i]  # the item itself is never a hit
        queries.append({"query_id": f"like-v{i}", "id": f"v{i}", "relevant": [f"v{j}" for j in order[:10]]})
    queries.append({"query_id": "like-itself", "id": "v5", "relevant": ["v5"]})
    path = write_jsonl(tmp_path / "ids.jsonl", queries)
    result = await run_eval(EvalConfig(address=cluster.address, collection=NAME, queries=str(path), at=(1, 10)))
    assert result.errors == {} and result.evaluated == 5
    scores = {s.query_id: s.metrics[10] for s in result.scores}
    for i in (0, 17, 123, 299):
        assert scores[f"like-v{i}"].recall == 1.0 and scores[f"like-v{i}"].average_precision == 1.0
    assert scores["like-itself"].recall == 0.0  # its only relevant id is the query item, which is excluded
