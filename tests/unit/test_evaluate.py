"""Offline evaluation's pure parts: each metric by hand, the aggregate, the query-set loader and the flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools import cli
from shardsearch.tools.evaluate import (
    EvalConfig,
    Metrics,
    QueryResult,
    QuerySetError,
    add_arguments,
    average_precision_at,
    config_from_args,
    cutoffs,
    load_queries,
    metrics_at,
    precision_at,
    recall_at,
    reciprocal_rank_at,
    score,
)


def approx(recall: float, precision: float, ap: float, rr: float) -> Metrics:
    return pytest.approx(Metrics(recall, precision, ap, rr))  # type: ignore[return-value]


def test_each_metric_by_hand() -> None:
    hits = ["a", "b", "c", "d", "e"]
    relevant = {"a", "c", "f"}
    # relevant at ranks 1 and 3; "f" never returned
    assert recall_at(hits, relevant, 5) == pytest.approx(2 / 3)
    assert precision_at(hits, relevant, 5) == pytest.approx(2 / 5)
    assert average_precision_at(hits, relevant, 5) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert reciprocal_rank_at(hits, relevant, 5) == 1.0
    assert metrics_at(hits, relevant, 2) == approx(1 / 3, 1 / 2, 1 / 2, 1.0)  # AP divides by min(|relevant|, K) = 2
    assert metrics_at(hits, relevant, 1) == approx(1 / 3, 1.0, 1.0, 1.0)


def test_first_relevant_hit_further_down() -> None:
    hits = ["x", "y", "r1", "z", "r2"]
    relevant = {"r1", "r2"}
    assert metrics_at(hits, relevant, 5) == approx(1.0, 2 / 5, (1 / 3 + 2 / 5) / 2, 1 / 3)
    assert metrics_at(hits, relevant, 3) == approx(1 / 2, 1 / 3, (1 / 3) / 2, 1 / 3)
    assert metrics_at(hits, relevant, 2) == approx(0.0, 0.0, 0.0, 0.0)  # nothing relevant within K: RR is 0


def test_ties_are_ranked_in_the_order_returned() -> None:
    """Two hits with the same score: whichever the server put first holds rank 1; scores are never consulted."""
    tied_scores = {"a": 0.5, "b": 0.5}
    assert tied_scores["a"] == tied_scores["b"]
    assert metrics_at(["b", "a"], {"a"}, 2) == approx(1.0, 1 / 2, 1 / 2, 1 / 2)
    assert metrics_at(["a", "b"], {"a"}, 2) == approx(1.0, 1 / 2, 1.0, 1.0)


def test_fewer_hits_than_k_lower_precision_only() -> None:
    assert metrics_at(["a"], {"a"}, 10) == approx(1.0, 1 / 10, 1.0, 1.0)
    assert metrics_at(["a", "b"], {"a", "b", "c"}, 10) == approx(2 / 3, 2 / 10, (1 + 1) / 3, 1.0)
    assert metrics_at([], {"a"}, 10) == approx(0.0, 0.0, 0.0, 0.0)


def test_k_larger_than_the_relevant_set_divides_ap_by_the_relevant_count() -> None:
    # relevant at ranks 2 and 4 of 6 hits, K = 100: AP = (1/2 + 2/4) / min(2, 100)
    assert metrics_at(["x", "a", "y", "b", "z", "w"], {"a", "b"}, 100) == approx(1.0, 2 / 100, 0.5, 1 / 2)


def test_duplicates_count_once_at_their_first_rank() -> None:
    """The repeat keeps its slot (the caller saw it) but is never relevant again."""
    hits = ["a", "a", "b"]
    assert metrics_at(hits, {"a", "b"}, 3) == approx(1.0, 2 / 3, (1 + 2 / 3) / 2, 1.0)
    assert metrics_at(hits, {"a", "b"}, 2) == approx(1 / 2, 1 / 2, 1 / 2, 1.0)
    assert metrics_at(["a", "a", "a"], {"a"}, 3) == approx(1.0, 1 / 3, 1.0, 1.0)


def test_no_relevant_ids_or_a_bad_k_are_refused() -> None:
    with pytest.raises(ValueError, match="no relevant ids"):
        recall_at(["a"], set(), 1)
    with pytest.raises(ValueError, match="K must be >= 1"):
        precision_at(["a"], {"a"}, 0)


def test_cutoffs_are_capped_at_k_sorted_and_unique() -> None:
    assert cutoffs((1, 5, 10, 100), 10) == (1, 5, 10)
    assert cutoffs((10, 1, 10), 20) == (1, 10)
    with pytest.raises(ValueError):
        cutoffs((0, 5), 10)
    with pytest.raises(ValueError):
        cutoffs((), 10)


def test_aggregate_skips_queries_without_relevant_ids_and_counts_failures() -> None:
    results = [
        QueryResult("q1", frozenset({"a", "b"}), hits=("a", "x", "b")),
        QueryResult("q2", frozenset(), hits=()),
        QueryResult("q3", frozenset({"a"}), error=("NOT_FOUND", "collection 'c' does not exist")),
        QueryResult("q4", frozenset({"a"}), error=("NOT_FOUND", "second message")),
        QueryResult("q5", frozenset({"c"}), hits=("x", "c", "y")),
    ]
    result = score(results, (1, 3), {"collection": "c", "k": 3}, elapsed_s=0.5)
    assert (result.queries, result.evaluated, result.skipped, result.failed) == (5, 2, 1, 2)
    assert result.errors == {"NOT_FOUND": {"count": 2, "example": "collection 'c' does not exist"}}
    # q1 at 1: (1/2, 1, 1, 1); q5 at 1: zeros. q1 at 3: (1, 2/3, (1 + 2/3)/2, 1); q5 at 3: (1, 1/3, 1/2, 1/2)
    assert result.metrics[1] == approx(1 / 4, 1 / 2, 1 / 2, 1 / 2)
    assert result.metrics[3] == approx(1.0, 1 / 2, ((1 + 2 / 3) / 2 + 1 / 2) / 2, 3 / 4)
    assert [s.status for s in result.scores] == ["evaluated", "skipped", "failed", "failed", "evaluated"]
    assert result.scores[2].error == "NOT_FOUND: collection 'c' does not exist"

    doc = json.loads(json.dumps(result.to_json(per_query=True)))
    assert set(doc) == {"metrics", "queries", "evaluated", "skipped", "failed", "errors", "elapsed_s", "settings",
                        "per_query"}
    assert doc["metrics"]["3"]["mrr"] == pytest.approx(3 / 4) and doc["settings"]["ks"] == [1, 3]
    assert doc["per_query"][4]["metrics"]["3"] == pytest.approx({"recall": 1.0, "precision": 1 / 3, "map": 0.5,
                                                                 "mrr": 0.5})
    assert "per_query" not in result.to_json()
    table = result.table()
    assert "5 queries: 2 evaluated, 1 skipped (no relevant ids), 2 failed" in table
    assert "     3     1.0000       0.5000     0.6667     0.7500" in table
    assert "failed: NOT_FOUND x2" in table


def test_aggregate_of_nothing_evaluated_has_no_means() -> None:
    result = score([QueryResult("q", frozenset())], (10,), {"k": 10})
    assert result.metrics == {} and result.evaluated == 0 and result.skipped == 1
    assert "    10          -" in result.table()


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loads_jsonl_with_every_query_kind(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "q.jsonl",
        '{"query_id": "first", "vector": [0.5, -1, 2.25], "relevant": ["a", "b"]}',
        "",
        '{"id": 42, "relevant_ids": [7, "x"]}',
        '{"text": "red shoes", "relevant": []}',
    )
    vector, by_id, text = load_queries(path)
    assert (vector.query_id, vector.kind, vector.relevant) == ("first", "vector", frozenset({"a", "b"}))
    assert vector.value == codec.pack(np.array([0.5, -1, 2.25], np.float32))
    assert (by_id.query_id, by_id.kind, by_id.value, by_id.relevant) == ("line 3", "id", "42", frozenset({"7", "x"}))
    assert (text.query_id, text.kind, text.value, text.relevant) == ("line 4", "text", "red shoes", frozenset())


def test_loads_a_json_list(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"vector": [1.0, 2.0], "relevant": ["a"]}, {"id": "a", "relevant": ["b"]}], indent=2))
    queries = load_queries(path)
    assert [(q.query_id, q.kind) for q in queries] == [("item 1", "vector"), ("item 2", "id")]


@pytest.mark.parametrize("bad_line, message", [
    ('{"vector": [1, 2], "relevant": ["a"]', r"line 3: not valid JSON"),
    ('{"vector": [1, 2], "id": "a", "relevant": ["b"]}', r"line 3: needs exactly one of .* got vector and id"),
    ('{"relevant": ["b"]}', r"line 3: needs exactly one of .* got none"),
    ('{"vector": [1, 2]}', r"line 3: 'relevant' must be a list"),
    ('{"vector": [1, 2], "relevant": ["a"], "relevant_ids": ["a"]}', r"line 3: give 'relevant' or 'relevant_ids'"),
    ('{"vector": [1, 2], "relevent": ["a"]}', r"line 3: unknown field\(s\) 'relevent'"),
    ('{"vector": [], "relevant": ["a"]}', r"line 3: 'vector' must be a non-empty list of numbers"),
    ('{"vector": [1, NaN], "relevant": ["a"]}', r"line 3: 'vector' contains NaN or Inf"),
    ('{"vector": [1, true], "relevant": ["a"]}', r"line 3: 'vector' must be a non-empty list of numbers"),
    ('{"id": "", "relevant": ["a"]}', r"line 3: 'id': ids are non-empty strings or integers"),
    ('{"text": "t", "relevant": [["a"]]}', r"line 3: 'relevant': ids are non-empty strings or integers"),
    ('{"query_id": "q1", "text": "t", "relevant": []}', r"line 3: query_id 'q1' is used twice"),
    ('["not", "an", "object"]', r"line 3: expected a JSON object, got list"),
])
def test_a_bad_line_is_named(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write_lines(tmp_path / "q.jsonl", '{"query_id": "q1", "id": "a", "relevant": ["b"]}', "", bad_line)
    with pytest.raises(QuerySetError, match=f"q.jsonl: {message}"):
        load_queries(path)


def test_an_empty_or_malformed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QuerySetError, match="no queries"):
        load_queries(write_lines(tmp_path / "empty.jsonl", "", ""))
    (tmp_path / "cut.json").write_text('[{"id": "a", "relevant": []},')
    with pytest.raises(QuerySetError, match="cut.json: not valid JSON"):
        load_queries(tmp_path / "cut.json")
    (tmp_path / "bad.json").write_text('[{"id": "a", "relevant": []}, 3]')
    with pytest.raises(QuerySetError, match="bad.json: item 2: expected a JSON object"):
        load_queries(tmp_path / "bad.json")
    with pytest.raises(QuerySetError, match="cannot read query file"):
        load_queries(tmp_path / "missing.jsonl")


def parse(*argv: str) -> EvalConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--collection", "c", "--queries", "q.jsonl", *argv]))


def test_flags_choose_k_and_the_cutoffs() -> None:
    default = parse()
    assert (default.k, default.ks, default.concurrency, default.timeout) == (10, (1, 5, 10), 16, 5.0)
    assert parse("--at", "1,20,50").k == 50  # no --k: the largest cutoff
    assert parse("--at", "1,20,50", "--k", "10").ks == (1, 10)
    assert parse("--k", "100").ks == (1, 5, 10, 100)
    with pytest.raises(SystemExit):
        parse("--at", "1,x")
    with pytest.raises(ValueError, match="concurrency"):
        EvalConfig(collection="c", concurrency=0)
    with pytest.raises(ValueError, match="collection is required"):
        EvalConfig()


def test_command_exits_2_naming_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad query file stops the command before it connects anywhere."""
    path = write_lines(tmp_path / "q.jsonl", '{"id": "a", "relevant": ["b"]}',
                       '{"id": "a", "vector": [1], "relevant": []}')
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--address", "127.0.0.1:1", "--collection", "c", "--queries", str(path)])
    assert exit_.value.code == 2
    assert "q.jsonl: line 2: needs exactly one of" in capsys.readouterr().err
