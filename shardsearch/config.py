"""Frozen-dataclass configs filled from environment variables (`PREFIX_FIELD_NAME`), overridden by CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, TypeVar

from shardsearch import logs

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What every gRPC server process takes alike: its RPC cap and the security of its port."""

    max_concurrent_rpcs: int = 20_000
    """RPCs a server process handles at once (a StreamSearch counts once); past it gRPC answers
    RESOURCE_EXHAUSTED. A backstop that bounds memory; the batch queues shed earlier."""
    max_pending_rpcs: int = 256
    """Calls that have arrived but wait for the event loop to pick them up (a flood faster than the process can
    even start handlers). Past this many gRPC core refuses new calls with a growing probability, every one at 3x
    this, with CANCELLED and before any Python runs: the wait before a handler stays bounded (about this many calls
    at the process's rate). 0 = gRPC's own limits (far larger: seconds of queue at a coordinator's rate)."""
    tls_cert_file: str = ""
    """PEM certificate chain for the gRPC port; with tls_key_file the port speaks TLS only ("" = plaintext)."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file."""
    tls_client_ca_file: str = ""
    """If set, callers must present a client certificate signed by this CA (mutual TLS; for a shard: the
    coordinator's and its peers')."""
    auth_token_file: str = ""
    """If set, every call but health and reflection needs `authorization: Bearer <t>` with t a line of this file."""
    log_level: str = "INFO"
    log_format: str = "text"
    """text (one readable line a record) or json (one object a line, for a log pipeline); both carry request ids."""
    access_log: str = "errors"
    """One log line per RPC: all, errors (every status but OK) or off."""

    def setup_logging(self) -> None:
        logs.setup_logging(self.log_level, self.log_format, self.access_log)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ServerSettings' logging and RPC cap fields (security has its own, in shardsearch.security)."""
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("--log-format", choices=logs.LOG_FORMATS, help="text (default) or json lines")
    parser.add_argument("--access-log", choices=logs.ACCESS_LOG_POLICIES,
                        help="a log line per RPC: all, errors (default: any status but OK) or off")
    parser.add_argument("--max-concurrent-rpcs", type=int, help="RPCs at once before RESOURCE_EXHAUSTED (20000)")
    parser.add_argument("--max-pending-rpcs", type=int,
                        help="calls waiting for the event loop before gRPC refuses new ones (256; 0 = gRPC's own)")


def _convert(raw: str, kind: Any) -> Any:
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def from_env(cls: type[T], prefix: str, env: dict[str, str] | None = None, **overrides: Any) -> T:
    """Builds `cls` from defaults, then `PREFIX_<FIELD>` environment variables, then non-None overrides."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = env.get(f"{prefix}{field.name.upper()}")
        if raw is not None:
            kind = hints[field.name]
            if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            values[field.name] = _convert(raw, kind)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def cache_kind(kind: str, redis_url: str, setting: str) -> str:
    """Resolves a cache setting (auto, redis, local or off) to redis, local or off: auto is Redis when a URL is set,
    else an in-process LRU. `setting` names it in errors."""
    if kind == "auto":
        kind = "redis" if redis_url else "local"
    if kind not in ("redis", "local", "off"):
        raise ValueError(f"unknown {setting} kind {kind!r}: use auto, redis, local or off")
    if kind == "redis" and not redis_url:
        raise ValueError(f"{setting}=redis needs redis_url (e.g. redis://redis:6379/0)")
    return kind
