"""`shardsearch ingest` without a server: the readers, batching, retries, bisection and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.ingest import sources
from shardsearch.tools.ingest.sources import Record, SourceError, image_source, jsonl_source, open_source, vector_source
from shardsearch.tools.ingest.summary import MAX_EXAMPLES, IngestSummary, group_reason
from shardsearch.tools.ingest.writer import BatchResult, RetryPolicy, RpcFailure, batches, write_batch
from shardsearch.v1 import search_pb2

FAST = RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.001)


def vectors_of(records: list[Record], dim: int) -> np.ndarray:
    return np.stack([codec.unpack(r.item.vector_f32, dim)[0] for r in records])  # type: ignore[union-attr]


def write_fvecs(path: Path, matrix: np.ndarray) -> None:
    dims = np.full((len(matrix), 1), matrix.shape[1], dtype="<i4")
    np.hstack([dims, matrix.astype("<f4").view("<i4")]).tofile(path)


# --- readers --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npy_rows_become_items_with_row_number_ids(tmp_path: Path, dtype: type,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_ROWS", 7)  # several chunks
    matrix = np.random.default_rng(1).standard_normal((20, 5)).astype(dtype)
    np.save(tmp_path / "v.npy", matrix)
    source = vector_source(tmp_path / "v.npy")
    assert (source.kind, source.total, source.dim, source.default_batch_size) == ("vectors", 20, 5, 256)
    records = list(source.records())
    assert [r.id for r in records] == [str(i) for i in range(20)]
    assert np.array_equal(vectors_of(records, 5), matrix.astype(np.float32))
    assert list(source.records()) == records  # each pass starts again


def test_ids_file_names_the_rows_and_must_match_their_count(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((3, 2), np.float32))
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    assert [r.id for r in vector_source(tmp_path / "v.npy", tmp_path / "ids.txt").records()] == ["a", "b", "c"]
    (tmp_path / "short.txt").write_text("a\nb")
    with pytest.raises(SourceError, match="2 ids for the 3 vectors"):
        vector_source(tmp_path / "v.npy", tmp_path / "short.txt")


def test_fvecs_reads_like_npy_and_a_row_of_another_dim_fails_alone(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_ROWS", 4)
    matrix = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32)
    write_fvecs(tmp_path / "v.fvecs", matrix)
    source = vector_source(tmp_path / "v.fvecs")
    assert (source.total, source.dim) == (10, 6)
    assert np.array_equal(vectors_of(list(source.records()), 6), matrix)

    raw = np.fromfile(tmp_path / "v.fvecs", dtype="<i4").reshape(10, 7)
    raw[5, 0] = 3  # a corrupt row header: the file still has a whole number of rows
    raw.tofile(tmp_path / "bad.fvecs")
    records = list(vector_source(tmp_path / "bad.fvecs").records())
    assert [r.id for r in records if r.error] == ["5"] and "row 5" in records[5].error
    assert sum(r.item is not None for r in records) == 9


def test_unreadable_vector_files_are_refused_up_front(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.ones(4, np.float32))
    with pytest.raises(SourceError, match="2-D"):
        vector_source(tmp_path / "flat.npy")
    (tmp_path / "torn.fvecs").write_bytes(np.array([4, 0, 0], "<i4").tobytes())
    with pytest.raises(SourceError, match="whole number of rows"):
        vector_source(tmp_path / "torn.fvecs")
    with pytest.raises(SourceError, match="cannot read"):
        vector_source(tmp_path / "missing.npy")


def test_jsonl_items_payloads_and_bad_lines_with_their_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "t1", "text": "a red shoe", "payload": {"colour": "red", "n": [1, 2]}}),
        json.dumps({"id": "v1", "vector": [1, 2.5, -3]}),
        "",  # blank lines are ignored
        "{not json",
        json.dumps({"id": "both", "text": "x", "vector": [1.0]}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "v2", "vector": [1, "two"]}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "t2", "text": "é", "payload": "plain"}),
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(lines))
    source = jsonl_source(tmp_path / "items.jsonl")
    assert (source.kind, source.total, source.default_batch_size) == ("texts", 9, 32)
    records = list(source.records())
    assert len(records) == 8
    good = {r.id: r.item for r in records if r.item is not None}
    assert good["t1"].text == "a red shoe" and good["t1"].payload == b'{"colour":"red","n":[1,2]}'
    assert codec.unpack(good["v1"].vector_f32, 3).tolist() == [[1.0, 2.5, -3.0]] and not good["v1"].payload
    assert good["t2"].payload == b'"plain"' and good["t2"].text == "é"
    errors = {r.id: r.error for r in records if r.error}
    assert errors == {
        "line 4": "line 4: not JSON (Expecting property name enclosed in double quotes)",
        "both": "line 5: set exactly one of 'text' and 'vector'",
        "line 6": "line 6: 'id' must be a non-empty string",
        "v2": "line 7: 'vector' must be a list of numbers",
        "line 8": "line 8: expected a JSON object",
    }
    assert source.first_vector_dim() == 3


def test_image_folder_is_walked_recursively_in_a_stable_order(tmp_path: Path) -> None:
    files = ["b.png", "a/z.JPG", "a/c/x.webp", "a/b.gif", "c.bmp", "d.jpeg", "notes.txt", "a/c/.hidden.md"]
    for i, name in enumerate(files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(bytes([i]) * 3)
    source = image_source(tmp_path)
    assert (source.kind, source.total, source.dim) == ("images", 6, None)
    records = list(source.records())
    assert [r.id for r in records] == ["b.png", "c.bmp", "d.jpeg", "a/b.gif", "a/z.JPG", "a/c/x.webp"]
    assert records[0].item.image == bytes([0]) * 3  # type: ignore[union-attr]
    assert all(r.item.payload == json.dumps({"path": r.id}, separators=(",", ":")).encode()  # type: ignore[union-attr]
               for r in records)
    assert [r.id for r in open_source(tmp_path).records()] == [r.id for r in records]
    with pytest.raises(SourceError, match="not a directory"):
        image_source(tmp_path / "b.png")


# --- batching, retries, bisection -----------------------------------------------------------------------------------

def record(item_id: str, nbytes: int = 0) -> Record:
    return Record(item_id, search_pb2.Item(id=item_id, image=b"x" * nbytes))


def test_batches_split_by_count_size_and_repeated_ids() -> None:
    ids = lambda groups: [[r.id for r in g] for g in groups]  # noqa: E731
    assert ids(batches([record(str(i)) for i in range(7)], 3)) == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    big = [record("a", 60), record("b", 60), record("c", 200), record("d", 10)]
    assert ids(batches(big, 10, max_bytes=150)) == [["a", "b"], ["c"], ["d"]]
    repeated = [record("a"), record("b"), record("a"), Record("line 3", error="bad"), Record("line 3", error="bad")]
    assert ids(batches(repeated, 10)) == [["a", "b"], ["a", "line 3", "line 3"]]
    with pytest.raises(ValueError):
        list(batches([], 0))


class FakeServer:
    """Upsert and Get over a dict, rejecting (INVALID_ARGUMENT) any request holding an id in `bad`, failing the first
    `flaky` calls with UNAVAILABLE; records each upsert's ids."""

    def __init__(self, bad: dict[str, str] | None = None, flaky: int = 0, code: grpc.StatusCode | None = None) -> None:
        self.bad, self.flaky, self.code = bad or {}, flaky, code
        self.stored: dict[str, search_pb2.Item] = {}
        self.calls: list[list[str]] = []

    async def upsert(self, items: list[search_pb2.Item]) -> None:
        self.calls.append([item.id for item in items])
        if self.flaky:
            self.flaky -= 1
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "shard-1 unavailable")
        if self.code is not None:
            raise RpcFailure(self.code, "no text model is configured")
        for i, item in enumerate(items):
            if item.id in self.bad:
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"items[{i}].vector: {self.bad[item.id]}")
        self.stored.update((item.id, item) for item in items)

    async def existing(self, ids: list[str]) -> set[str]:
        return {i for i in ids if i in self.stored}


async def test_bisection_reports_each_bad_item_and_lands_the_rest() -> None:
    server = FakeServer(bad={"7": "3 values, but the collection has dim 4", "12": "contains NaN or Inf"})
    batch = [record(str(i)) for i in range(16)]
    result = await write_batch(batch, server.upsert, None, FAST)
    assert result.done == 14 and result.skipped == 0
    assert result.failures == [("7", "INVALID_ARGUMENT: items[0].vector: 3 values, but the collection has dim 4"),
                               ("12", "INVALID_ARGUMENT: items[0].vector: contains NaN or Inf")]
    assert sorted(server.stored, key=int) == [str(i) for i in range(16) if i not in (7, 12)]
    assert len(server.calls) <= 1 + 2 * 2 * 4  # two bad items, each isolated in log2(16) halvings


async def test_stored_ids_are_skipped_unless_overwriting() -> None:
    server = FakeServer()
    await write_batch([record("a"), record("b")], server.upsert, server.existing, FAST)
    result = await write_batch([record("a"), record("b"), record("c")], server.upsert, server.existing, FAST)
    assert (result.done, result.skipped, server.calls[-1]) == (1, 2, ["c"])
    everything = await write_batch([record("a"), record("b")], server.upsert, server.existing, FAST)
    assert (everything.done, everything.skipped, len(server.calls)) == (0, 2, 2)  # nothing left to send
    result = await write_batch([record("a"), record("b")], server.upsert, None, FAST)
    assert (result.done, result.skipped, server.calls[-1]) == (2, 0, ["a", "b"])


async def test_transient_errors_are_retried_and_others_fail_the_batch() -> None:
    server = FakeServer(flaky=2)
    result = await write_batch([record("a"), record("b")], server.upsert, None, FAST)
    assert (result.done, len(server.calls)) == (2, 3)
    hopeless = FakeServer(flaky=10)
    result = await write_batch([record("a")], hopeless.upsert, None, FAST)
    assert result.failures == [("a", "UNAVAILABLE: shard-1 unavailable")] and len(hopeless.calls) == 4
    unconfigured = FakeServer(code=grpc.StatusCode.FAILED_PRECONDITION)
    result = await write_batch([record("a"), record("b")], unconfigured.upsert, None, FAST)
    assert result.failures == [("a", "FAILED_PRECONDITION: no text model is configured"),
                               ("b", "FAILED_PRECONDITION: no text model is configured")]
    assert len(unconfigured.calls) == 1  # not retried, not bisected


async def test_unreadable_records_fail_without_a_call() -> None:
    server = FakeServer()
    result = await write_batch([Record("line 2", error="line 2: not JSON"), record("a")], server.upsert, None, FAST)
    assert (result.done, result.failures, server.calls) == (1, [("line 2", "line 2: not JSON")], [["a"]])


async def test_retry_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.1, max_backoff_s=1.0)
    assert [0.05 <= policy.delay(0) <= 0.1, 0.1 <= policy.delay(1) <= 0.2, 0.5 <= policy.delay(6) <= 1.0] == [True] * 3


# --- the summary ----------------------------------------------------------------------------------------------------

def test_summary_groups_failures_by_reason_with_up_to_ten_examples() -> None:
    summary = IngestSummary("c", "x.jsonl", elapsed_s=2.0)
    summary.add(BatchResult(done=30, skipped=5))
    summary.add(BatchResult(failures=[(f"id{i}", f"INVALID_ARGUMENT: items[{i % 3}].vector: wrong dim")
                                      for i in range(12)]))
    summary.add(BatchResult(done=10, failures=[("line 4", "line 4: not JSON")]))
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (40, 5, 13, 1)
    assert summary.items_per_s == 20.0
    doc = summary.to_json()
    assert doc["failures"] == [
        {"reason": "INVALID_ARGUMENT: items[i].vector: wrong dim", "count": 12,
         "examples": [f"id{i}" for i in range(MAX_EXAMPLES)]},
        {"reason": "line 4: not JSON", "count": 1, "examples": ["line 4"]},
    ]
    assert json.loads(json.dumps(doc)) == doc
    text = summary.text()
    assert "40 done, 5 skipped (already stored), 13 failed" in text and "+2 more" in text
    assert group_reason("NOT_FOUND: ids[12] and items[3]") == "NOT_FOUND: ids[i] and items[i]"
    assert IngestSummary("c", "x").exit_code == 0
