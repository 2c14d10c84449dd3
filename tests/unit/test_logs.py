"""Request ids in log records, the batch form of ids, and what the access log writes under each policy."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from shardsearch import logs
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured as a server does, writing into a buffer (restored afterwards)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    logs.setup_logging("INFO", "text", "errors")  # the default access policy again
    root.handlers[:] = handlers
    root.setLevel(level)


def configure(buffer: io.StringIO, fmt: str, access: str) -> None:
    logs.setup_logging("INFO", fmt, access)
    logging.getLogger().handlers[0].setStream(buffer)  # type: ignore[attr-defined]


def test_json_lines_carry_the_bound_request_id(captured: io.StringIO) -> None:
    configure(captured, "json", "errors")
    token = logs.bind_request_id("req-1")
    logging.getLogger("x").warning("inside %s", "a request")
    logs.unbind_request_id(token)
    logging.getLogger("x").warning("outside")
    inside, outside = (json.loads(line) for line in captured.getvalue().splitlines())
    assert inside["request_id"] == "req-1" and inside["message"] == "inside a request" and inside["level"] == "WARNING"
    assert outside["request_id"] == "-"


def test_text_lines_show_the_request_id(captured: io.StringIO) -> None:
    configure(captured, "text", "errors")
    token = logs.bind_request_id("req-2")
    logging.getLogger("y").info("hello")
    logs.unbind_request_id(token)
    assert "[req-2] hello" in captured.getvalue()


@pytest.mark.parametrize(
    ("policy", "logged"), [("all", ["OK", "NOT_FOUND", "INTERNAL"]), ("errors", ["NOT_FOUND", "INTERNAL"]), ("off", [])]
)
def test_access_log_policies(captured: io.StringIO, policy: str, logged: list[str]) -> None:
    configure(captured, "json", policy)
    for code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL):
        logs.log_access("Search", code, 0.0012)
    records = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [r["code"] for r in records] == logged
    assert all(r["logger"] == "shardsearch.access" and r["method"] == "Search" for r in records)
    assert [r["level"] for r in records] == ["ERROR" if c == "INTERNAL" else "INFO" for c in logged]


def test_unknown_format_or_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.setup_logging("INFO", "xml", "errors")
    with pytest.raises(ValueError, match="access log policy"):
        logs.setup_logging("INFO", "text", "some")


def test_batch_ids_are_joined_deduplicated_and_capped() -> None:
    assert logs.join_request_ids(["a", "b", "a", "", "c"]) == "a,b,c"
    many = logs.join_request_ids(f"r{i}" for i in range(40))
    assert many.split(",")[: logs.MAX_BATCH_IDS] == [f"r{i}" for i in range(logs.MAX_BATCH_IDS)]
    assert many.endswith(",+8 more")


@pytest.mark.parametrize("value", ["", "x" * (logs.MAX_HEADER_CHARS + 1), "tab\there", "caf\u00e9"])
def test_unusable_incoming_ids_are_replaced(value: str) -> None:
    request_id = logs.request_id_from([(logs.REQUEST_ID_HEADER, value)])
    assert request_id != value and len(request_id) == 16


def test_a_usable_incoming_id_is_kept_and_passed_on() -> None:
    assert logs.request_id_from([("other", "x"), (logs.REQUEST_ID_HEADER, "abc-123")]) == "abc-123"
    assert logs.request_id_from(None) != logs.request_id_from(None)
    token = logs.bind_request_id("abc-123")
    assert logs.outgoing_metadata() == ((logs.REQUEST_ID_HEADER, "abc-123"),)
    logs.unbind_request_id(token)
    assert logs.outgoing_metadata() is None


@pytest.mark.parametrize(("child", "expected"), [("q1", "s/q1"), ("caf\u00e9\n", "s/caf\\xe9\\n"), ("x" * 200, "s/" + "x" * 128)])
def test_child_ids_are_valid_header_values(child: str, expected: str) -> None:
    value = logs.child_request_id("s", child)
    assert value == expected
    assert value.isascii() and value.isprintable()


async def test_a_batch_runs_under_all_its_requests_ids() -> None:
    seen: list[str] = []

    async def run(key: object, items: list[str], timeout: float) -> list[str]:
        seen.append(logs.current_request_id())
        await asyncio.sleep(0.01)
        return items

    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=20_000, max_in_flight=1)
    batcher: Batcher[str, str] = Batcher("test", config, run, BatchMetrics(CollectorRegistry(), "test"))

    async def caller(request_id: str) -> str:
        logs.bind_request_id(request_id)  # each caller is its own task, as each RPC is
        return await batcher.submit("k", request_id, 1, 5.0)

    first = asyncio.create_task(caller("first"))
    await asyncio.sleep(0)  # the first runs alone; the next three queue behind it and go as one batch
    results = await asyncio.gather(first, *(caller(f"r{i}") for i in range(3)))
    await batcher.close()
    assert results == ["first", "r0", "r1", "r2"]
    assert seen == ["first", "r0,r1,r2"]
    assert logs.current_request_id() == ""  # the dispatcher's binding never leaked into this task
