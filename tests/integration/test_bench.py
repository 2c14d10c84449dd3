"""The load generator against a real 4-shard cluster: counts, recall, errors by code, the command and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shardsearch.tools import cli
from shardsearch.tools.bench import BenchConfig, read_workload, run_bench
from tests.conftest import write_dataset
from tests.integration.conftest import create, upsert

NAME = "bench"
DIM = 16
RESULT_KEYS = {
    "config", "duration_s", "requests", "queries", "answered", "qps", "calls_per_s", "latency_s", "errors",
    "recall_at_10", "cached_fraction", "partial_fraction", "late", "dropped",
}


@pytest.fixture(scope="module")
def files(stub, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small exact (untrained) collection with ids v0, v1, ... and query/ground-truth files computed by numpy."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((2_000, DIM)).astype(np.float32)
    queries = rng.standard_normal((40, DIM)).astype(np.float32)
    create(stub, NAME, DIM)
    upsert(stub, NAME, [f"v{i}" for i in range(len(base))], base)
    distances = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
    folder = tmp_path_factory.mktemp("bench")
    np.save(folder / "queries.npy", queries)
    np.save(folder / "gt.npy", np.argsort(distances, axis=1)[:, :10].astype(np.int32))
    return folder / "queries.npy", folder / "gt.npy"


def config(cluster, files: tuple[Path, Path], **overrides: object) -> BenchConfig:
    queries, truth = files
    return BenchConfig(**{
        "address": cluster.address, "collection": NAME, "queries": str(queries), "ground_truth": str(truth),
        "id_format": "v{}", "skip_cache": True, **overrides,
    })


async def test_closed_unary_reports_exact_recall(cluster, files) -> None:
    result = await run_bench(config(cluster, files, requests=200, concurrency=4))
    assert (result.requests, result.queries, result.answered, result.errors) == (200, 200, 200, {})
    assert result.recall_at_10 is not None and result.recall_at_10 >= 0.99
    assert result.cached_fraction == 0.0 and result.partial_fraction == 0.0
    latency = result.latency_s
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert result.qps > 0 and result.calls_per_s == pytest.approx(result.qps)


@pytest.mark.parametrize("call", ["batch", "stream-batch"])
async def test_batch_counts_queries_not_calls(cluster, files, call: str) -> None:
    result = await run_bench(config(cluster, files, call=call, batch_size=16, requests=100, concurrency=2))
    assert (result.requests, result.queries, result.answered) == (7, 100, 100)  # 6 full batches and one of 4
    assert result.recall_at_10 is not None and result.recall_at_10 >= 0.99
    assert result.qps == pytest.approx(result.calls_per_s * 100 / 7)


async def test_stream_counts_every_message_after_the_warmup(cluster, files) -> None:
    """Also the in-process form: the queries handed over as arrays rather than named in the config."""
    stream = BenchConfig(address=cluster.address, collection=NAME, id_format="v{}", call="stream", streams=2,
                         channels=2, concurrency=8, requests=150, warmup=0.2)
    result = await run_bench(stream, read_workload(*files))
    assert (result.requests, result.queries, result.answered, result.errors) == (150, 150, 150, {})
    assert result.recall_at_10 is not None and result.recall_at_10 >= 0.99


@pytest.mark.parametrize("call, batch_size", [("unary", 1), ("stream", 1), ("batch", 10)])
async def test_open_loop_issues_rate_times_duration(cluster, files, call: str, batch_size: int) -> None:
    result = await run_bench(config(
        cluster, files, mode="open", call=call, batch_size=batch_size, rate=100, duration=1.0, warmup=0.2,
    ))
    calls = 100 // batch_size
    assert calls - 1 <= result.requests + result.dropped <= calls + 1
    assert result.queries == result.requests * batch_size and result.answered == result.queries
    assert result.errors == {}


async def test_errors_are_counted_by_code(cluster, files) -> None:
    for call in ("unary", "stream", "batch", "stream-batch"):
        result = await run_bench(config(cluster, files, collection="missing", call=call, requests=20, batch_size=5))
        assert result.answered == 0 and result.recall_at_10 is None and result.latency_s["p50"] is None
        assert result.errors == {"NOT_FOUND": 4 if call in ("batch", "stream-batch") else 20}, call


def test_command_exits_non_zero_when_every_request_fails(cluster, files, tmp_path: Path) -> None:
    queries, _ = files
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--address", cluster.address, "--collection", "missing", "--queries", str(queries),
                  "--requests", "10", "--quiet", "--json", str(out)])
    assert exit_.value.code == 1
    assert json.loads(out.read_text())["errors"] == {"NOT_FOUND": 10}


def test_command_loads_a_dataset_and_writes_json(cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "dataset")
    out = tmp_path / "result.json"
    cli.main(["bench", "--address", cluster.address, "--collection", "bench-vectors", "--dataset",
              str(dataset), "--load", "--requests", "300", "--concurrency", "4", "--skip-cache",
              "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result) == RESULT_KEYS
    assert set(result["latency_s"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert result["config"]["dataset"] == str(dataset) and result["config"]["skip_cache"] is True
    assert (result["queries"], result["answered"], result["errors"]) == (300, 300, {})
    assert result["recall_at_10"] >= 0.99  # 2,500 vectors a shard: exact search
    assert result["late"] == 0 and result["dropped"] == 0
    summary = capsys.readouterr().out
    assert "queries/s" in summary and "recall@10   " in summary


def test_gates_pass_quietly_and_fail_naming_each_missed_gate(cluster, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "dataset")
    flags = ["bench", "--address", cluster.address, "--collection", "bench-gates", "--dataset", str(dataset),
             "--requests", "200", "--concurrency", "4", "--skip-cache", "--quiet"]
    cli.main([*flags, "--load", "--max-p99-ms", "10000", "--min-qps", "1", "--max-error-rate", "0",
              "--min-recall", "0.9"])  # every gate passes: returns normally
    with pytest.raises(SystemExit) as exit_:
        cli.main([*flags, "--max-p99-ms", "0.001", "--min-qps", "1e9", "--min-recall", "1.01"])
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert "gate failed: p99 latency" in err and "--max-p99-ms 0.001" in err
    assert "gate failed: throughput" in err and "--min-qps 1e+09" in err
    assert "gate failed: recall@10" in err and "--max-error-rate" not in err


def test_a_concurrency_sweep_prints_a_row_per_step_and_writes_json_and_csv(cluster, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    dataset = write_dataset(tmp_path / "dataset")
    out, table = tmp_path / "sweep.json", tmp_path / "sweep.csv"
    cli.main(["bench", "--address", cluster.address, "--collection", "bench-sweep", "--dataset", str(dataset),
              "--load", "--requests", "100", "--concurrency", "1,4,16", "--skip-cache", "--quiet",
              "--json", str(out), "--csv", str(table)])
    documents = json.loads(out.read_text())
    assert [d["config"]["concurrency"] for d in documents] == [1, 4, 16]
    assert all(d["answered"] == 100 and d["recall_at_10"] >= 0.99 for d in documents)
    rows = list(csv.DictReader(table.open()))
    assert [row["step"] for row in rows] == ["1", "4", "16"] and all(float(row["qps"]) > 0 for row in rows)
    printed = capsys.readouterr().out
    assert printed.count("throughput") == 3 and "step qps" in printed
