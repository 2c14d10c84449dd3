"""Frozen-dataclass configs filled from environment variables (`PREFIX_FIELD_NAME`), overridden by CLI flags."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import os
import sys
import textwrap
import types
import typing
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

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
    """DEBUG, INFO, WARNING or ERROR."""
    log_format: str = "text"
    """text (one readable line a record) or json (one object a line, for a log pipeline); both carry request ids."""
    access_log: str = "errors"
    """One log line per RPC: all, errors (every status but OK) or off."""

    ENV_PREFIX: ClassVar[str] = ""
    """Where the subclass reads its environment variables (`PREFIX_FIELD_NAME`)."""

    def setup_logging(self) -> None:
        logs.setup_logging(self.log_level, self.log_format, self.access_log)

    def setting(self, name: str) -> str:
        """`--flag-name / PREFIX_FLAG_NAME`: how a user sets field `name`, for error messages."""
        return setting(name, self.ENV_PREFIX)

    def validate(self) -> None:
        """Checks what can be checked without files or the network; raises ConfigError naming the setting. The
        subclasses extend it."""
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"{self.setting('log_level')}: {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        if self.log_format not in logs.LOG_FORMATS:
            raise ConfigError(f"{self.setting('log_format')}: {self.log_format!r} is not one of {logs.LOG_FORMATS}")
        if self.access_log not in logs.ACCESS_LOG_POLICIES:
            raise ConfigError(f"{self.setting('access_log')}: {self.access_log!r} is not one of "
                              f"{logs.ACCESS_LOG_POLICIES}")
        for name in ("max_concurrent_rpcs", "max_pending_rpcs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.setting(name)} must be >= 0")
        batching_config = getattr(self, "batching_config", None)
        if batching_config is not None:
            try:
                batching_config()
            except ValueError as exc:
                raise ConfigError(f"batching (--batch-*): {exc}") from None


class ConfigError(ValueError):
    """A setting that cannot work; the message names the flag and the environment variable that set it."""


def settings_help(cls: type) -> dict[str, str]:
    """Each field's help: `metadata["help"]` (fields made by a factory), else the docstring under its declaration."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        with contextlib.suppress(OSError, TypeError):
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
            statements = body.body if isinstance(body, ast.ClassDef) else []
            for stmt, after in zip(statements, statements[1:]):
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    docs[stmt.target.id] = " ".join(after.value.value.split())
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "help" in field.metadata:
            docs[field.name] = field.metadata["help"]
    return docs


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting(name: str, prefix: str | None) -> str:
    """How a caller sets a field: `--flag-name` (and `PREFIX_FLAG_NAME` where the config reads the environment)."""
    return f"{flag(name)} / {prefix}{name.upper()}" if prefix else flag(name)


def _field_type(cls: type, name: str) -> Any:
    kind = typing.get_type_hints(cls)[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, env_prefix: str | None = None,
    aliases: dict[str, Sequence[str]] | None = None, title: str | None = None,
) -> None:
    """One flag per field of the config dataclass `cls`, named after the field (`batch_max_size` ->
    `--batch-max-size`; a bool gets `--x` and `--no-x`), typed by its annotation, with the field's docstring, its
    default and its environment variable as help. Flags default to None, so only the ones given override the
    environment (see from_env). Each setting is declared once: as a field."""
    group = parser.add_argument_group(title) if title else parser
    docs = settings_help(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _field_type(cls, field.name)
        names = [flag(field.name), *(aliases or {}).get(field.name, ())]
        default = _default(field)
        shown = ",".join(default) if isinstance(default, tuple) else default
        where = f"default {shown!r}" + (f"; env {env_prefix}{field.name.upper()}" if env_prefix else "")
        text = f"{docs.get(field.name, '')} [{where}]".strip().replace("%", "%%")
        if kind is bool:
            group.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(*names, dest=field.name, type=_comma_list, default=None, metavar="A,B,...", help=text)
        else:
            group.add_argument(*names, dest=field.name, type=kind, default=None, metavar=kind.__name__.upper(),
                               help=text)


def _comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def overrides_from(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given on the command line for `cls`'s fields (the others are None)."""
    return {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(cls)} and v is not None}


@contextlib.contextmanager
def config_errors(prog: str) -> Iterator[None]:
    """Turns a configuration error into one line on stderr and exit status 2, like a bad flag."""
    try:
        yield
    except ConfigError as exc:  # the configs' own checks, and files they name (SecurityConfigError)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def command(
    prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], None],
) -> Callable[[Sequence[str] | None], None]:
    """The `main(argv)` of a server's `python -m` entry point: parse its flags, then run."""
    def main(argv: Sequence[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=prog, description=description)
        add_arguments(parser)
        run(parser.parse_args(argv))

    return main


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False,
            "": False}


def _convert(raw: str, kind: Any) -> Any:
    if kind is bool:
        value = BOOLEANS.get(raw.strip().lower())
        if value is None:
            raise ValueError("expected true or false (1/0, yes/no, on/off)")
        return value
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if typing.get_origin(kind) is tuple:
        return _comma_list(raw)
    return raw


def from_env(cls: type[T], prefix: str, env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds `cls` from defaults, then `PREFIX_<FIELD>` environment variables, then non-None overrides. A value
    that does not parse raises ConfigError naming the variable and the flag."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = env.get(f"{prefix}{field.name.upper()}")
        if raw is None:
            continue
        kind = _field_type(cls, field.name)
        try:
            values[field.name] = _convert(raw, kind)
        except ValueError as exc:
            what = {int: "an integer", float: "a number"}.get(kind, "a valid value")
            reason = str(exc) if kind is bool else f"expected {what}"
            raise ConfigError(f"{prefix}{field.name.upper()}={raw!r}: {reason} (flag {flag(field.name)})") from None
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
