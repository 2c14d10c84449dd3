"""Logging for every shardsearch process: text or JSON lines, each carrying the request id it was written for.

Request ids travel in the `x-request-id` gRPC metadata header. A server takes the caller's id (or makes one up),
binds it to the handling task (a context variable), sends it back in the trailing metadata, and passes it on with
every call it makes to another server; every log line written while handling the call carries it. A batch that
answers several requests at once carries all their ids, joined by commas (at most MAX_BATCH_IDS, then "+N more"),
so a request can be followed from the coordinator through the shard's FAISS batch that served it.

One access line per RPC goes to the `shardsearch.access` logger: all of them, only the failed ones (the default:
every call with a status other than OK), or none.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any, Callable, Iterable, Sequence

import grpc
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
MAX_BATCH_IDS = 32
MAX_HEADER_CHARS = (MAX_REQUEST_ID_CHARS + 1) * (MAX_BATCH_IDS + 1)
LOG_FORMATS = ("text", "json")
ACCESS_LOG_POLICIES = ("all", "errors", "off")
SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("shardsearch_request_id", default="")
access_logger = logging.getLogger("shardsearch.access")
_access_policy = "errors"


def new_request_id() -> str:
    return os.urandom(8).hex()


def current_request_id() -> str:
    """The id (or comma-joined ids, for a batch) of the request the running task works for; "" if none."""
    return _request_id.get()


def bind_request_id(request_id: str) -> contextvars.Token[str]:
    """Marks the running task (and the tasks it creates from now on) as working for `request_id`."""
    return _request_id.set(request_id)


def unbind_request_id(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)


def join_request_ids(ids: Iterable[str]) -> str:
    """The ids of a batch's requests as one header value (duplicates and blanks dropped, order kept, capped)."""
    unique = list(dict.fromkeys(i for i in ids if i))
    if len(unique) <= MAX_BATCH_IDS:
        return ",".join(unique)
    return ",".join(unique[:MAX_BATCH_IDS]) + f",+{len(unique) - MAX_BATCH_IDS} more"


def request_id_from(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's `x-request-id` if it is usable (printable ASCII; at most 128 characters an id, and a batch's
    joined ids from a coordinator), else a new id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            if value and len(value) <= MAX_HEADER_CHARS and value.isascii() and value.isprintable():
                return value
            break
    return new_request_id()


def child_request_id(parent: str, child: str) -> str:
    """`parent/child` for a part of a request named by the caller (a StreamSearch message's request_id field),
    with `child` escaped to printable ASCII and cut to 128 characters, so it is a valid header value."""
    return f"{parent}/{child.encode('unicode_escape').decode('ascii')[:MAX_REQUEST_ID_CHARS]}"


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """Metadata for a call made on behalf of the current request: its id, so the next hop logs it too."""
    request_id = _request_id.get()
    return ((REQUEST_ID_HEADER, request_id),) if request_id else None


def log_access(method: str, code: grpc.StatusCode, seconds: float, peer: str | Callable[[], str] = "") -> None:
    """One line per RPC, subject to the access log policy (all / errors / off). `peer` names the caller, or is
    called for its name only if the line is written (a live call's `context.peer`; never a finished call's)."""
    if _access_policy == "off" or (_access_policy == "errors" and code == grpc.StatusCode.OK):
        return
    level = logging.ERROR if code in SERVER_FAULTS else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    access_logger.log(
        level, "%s %s %.2f ms", method, code.name, seconds * 1e3,
        extra={"method": method, "code": code.name, "duration_seconds": round(seconds, 6),
               "peer": peer() if callable(peer) else peer},
    )


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id ("-" outside a request, for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s] %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "text", access_log: str = "errors") -> None:
    """Configures the root logger once per process: `fmt` text or json (one object a line), access log policy."""
    global _access_policy
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    if access_log not in ACCESS_LOG_POLICIES:
        raise ValueError(f"access log policy must be one of {', '.join(ACCESS_LOG_POLICIES)}, not {access_log!r}")
    _access_policy = access_log
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(  # "timestamp": ISO 8601, UTC, to the microsecond
            "{levelname}{name}{process}{message}", style="{", timestamp=True,
            rename_fields={"levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
