"""The load generator's pure parts: query files, serialized requests, the run plan, the tally, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shardsearch.tools.bench import BenchConfig, read_workload
from shardsearch.tools.bench.callers import with_request_id
from shardsearch.tools.bench.recorder import Recorder
from shardsearch.tools.bench.schedule import Plan
from shardsearch.tools.bench.workload import Request, batch_request, batches, read_ids, read_vectors, search_request
from shardsearch.v1 import search_pb2


def write_vecs(path: Path, matrix: np.ndarray) -> None:
    """The TEXMEX layout: each row prefixed by its dimension as int32."""
    dims = np.full((len(matrix), 1), matrix.shape[1], dtype="<i4")
    np.hstack([dims, matrix.view("<i4")]).tofile(path)


def test_fvecs_ivecs_and_npy_read_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((7, 5)).astype("<f4")
    ids = rng.integers(0, 1000, (7, 12)).astype("<i4")
    write_vecs(tmp_path / "q.fvecs", vectors)
    write_vecs(tmp_path / "gt.ivecs", ids)
    np.save(tmp_path / "q.npy", (vectors * 10).astype(np.int16))
    assert np.array_equal(read_vectors(tmp_path / "q.fvecs"), vectors)
    assert np.array_equal(read_ids(tmp_path / "gt.ivecs"), ids)
    assert read_vectors(tmp_path / "q.npy").dtype == np.float32


def test_truncated_fvecs_and_short_ground_truth_are_refused(tmp_path: Path) -> None:
    write_vecs(tmp_path / "q.fvecs", np.ones((3, 4), "<f4"))
    (tmp_path / "cut.fvecs").write_bytes((tmp_path / "q.fvecs").read_bytes()[:-4])
    with pytest.raises(ValueError, match="not a 4-d vecs file"):
        read_vectors(tmp_path / "cut.fvecs")
    np.save(tmp_path / "gt.npy", np.zeros((3, 5), np.int32))
    with pytest.raises(ValueError, match=">= 10 ids"):
        read_workload(tmp_path / "q.fvecs", tmp_path / "gt.npy")


def test_request_id_is_appended_to_serialized_requests() -> None:
    queries = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = search_request(queries, (1,), collection="c", k=7, skip_cache=True)
    parsed = search_pb2.SearchRequest.FromString(with_request_id(request.payload, "12345"))
    assert (parsed.collection, parsed.k, parsed.skip_cache, parsed.request_id) == ("c", 7, True, "12345")
    assert np.array_equal(np.frombuffer(parsed.vector_f32, "<f4"), queries[1])


def test_batches_walk_the_queries_and_wrap() -> None:
    assert batches(5, 2) == [(0, 1), (2, 3), (4, 0)]
    queries = np.arange(10, dtype=np.float32).reshape(5, 2)
    parsed = search_pb2.BatchSearchRequest.FromString(batch_request(queries, (4, 0), collection="c").payload)
    assert np.array_equal(np.frombuffer(parsed.vectors_f32, "<f4").reshape(-1, 2), queries[[4, 0]])


def test_plan_measures_exactly_the_requested_queries_after_the_warmup() -> None:
    requests = [Request(b"", rows) for rows in batches(10, 4)]
    plan = Plan(requests, lambda rows: Request(b"short", rows), warmup=1.0, duration=5.0, queries=10)
    warm = plan.next(plan.start)
    assert warm is not None and warm[1] is False
    measured = []
    while (step := plan.next(plan.start + 2.0)) is not None:
        measured.append(step[0])
    assert [len(r.queries) for r in measured] == [4, 4, 2] and measured[-1].payload == b"short"


def test_plan_stops_at_the_deadline() -> None:
    plan = Plan([Request(b"", (0,))], lambda rows: Request(b"", rows), warmup=0.5, duration=1.0, queries=None)
    assert plan.next(plan.start + 1.49) is not None and plan.next(plan.start + 1.5) is None


def test_recorder_recall_latency_and_errors() -> None:
    recorder = Recorder([frozenset(str(i) for i in range(10)), frozenset(str(i) for i in range(10, 20))])
    hits = search_pb2.SearchResponse(hits=[search_pb2.Hit(id=str(i)) for i in range(5, 15)], cached=True)
    recorder.answer(Request(b"", (0, 1)), 0.0, [hits, hits])
    recorder.failure(Request(b"", (0,)), "UNAVAILABLE")
    assert recorder.recall_at_10 == 0.5 and recorder.cached == 2 and recorder.answered == 2
    assert (recorder.requests, recorder.queries, dict(recorder.errors)) == (2, 3, {"UNAVAILABLE": 1})
    assert set(recorder.latency_summary()) == {"p50", "p90", "p99", "p99.9", "max", "mean"}


@pytest.mark.parametrize("bad, message", [
    ({"mode": "open"}, "rate > 0"),
    ({"call": "grpc"}, "call must be"),
    ({"load": True}, "load needs dataset"),
    ({"dataset": "d", "queries": "q.npy"}, "either dataset"),
    ({"concurrency": 0}, ">= 1"),
])
def test_config_refuses_contradictions(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(collection="c", **bad)


def test_ghz_data_is_the_search_requests_in_proto3_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from google.protobuf import json_format

    from shardsearch.tools import cli

    queries = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "ghz.json"
    cli.main(["bench", "--collection", "sift", "--queries", str(tmp_path / "q.npy"), "--k", "7", "--skip-cache",
              "--write-ghz-data", str(out)])
    messages = [json_format.ParseDict(m, search_pb2.SearchRequest()) for m in json.loads(out.read_text())]
    assert len(messages) == 5 and all(m.collection == "sift" and m.k == 7 and m.skip_cache for m in messages)
    assert np.array_equal(np.frombuffer(messages[3].vector_f32, "<f4"), queries[3])
    assert "ghz --insecure" in capsys.readouterr().out
