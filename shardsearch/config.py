"""Frozen-dataclass configs filled from environment variables (`PREFIX_FIELD_NAME`), overridden by CLI flags."""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, TypeVar

T = TypeVar("T")


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
