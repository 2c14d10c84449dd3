"""Every setting of both servers is one dataclass field, set by a flag and by an environment variable alike; a bad
value is one line naming both, and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import typing
from types import ModuleType
from typing import Any

import pytest

from shardsearch import config as settings
from shardsearch.coordinator import __main__ as coordinator_main
from shardsearch.coordinator.config import CoordinatorConfig
from shardsearch.shard_server import __main__ as shard_main
from shardsearch.shard_server.config import ShardConfig

SERVERS = [
    pytest.param(coordinator_main, CoordinatorConfig, "SHARDSEARCH_COORDINATOR_", id="coordinator"),
    pytest.param(shard_main, ShardConfig, "SHARDSEARCH_SHARD_", id="shard"),
]


def another_value(kind: Any, default: Any) -> tuple[Any, list[str], str]:
    """A value unlike the default: (value, its flag arguments after the flag name, its environment form)."""
    if kind is bool:
        return (not default), [], "true" if not default else "false"
    if kind is int:
        return default + 3, [str(default + 3)], str(default + 3)
    if kind is float:
        return default + 1.5, [str(default + 1.5)], str(default + 1.5)
    if typing.get_origin(kind) is tuple:
        return ("a:1", "b:2"), ["a:1,b:2"], "a:1,b:2"
    return "some-value", ["some-value"], "some-value"


@pytest.mark.parametrize(("main", "cls", "prefix"), SERVERS)
def test_every_setting_is_a_flag_and_an_environment_variable(main: ModuleType, cls: type, prefix: str) -> None:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    hints = typing.get_type_hints(cls)
    docs = settings.settings_help(cls)
    for field in dataclasses.fields(cls):
        default = getattr(cls(), field.name)
        value, flag_args, env_value = another_value(hints[field.name], default)
        flag = "--" + field.name.replace("_", "-")
        if hints[field.name] is bool:
            flag = flag if value else "--no-" + field.name.replace("_", "-")
        by_flag = cls.from_env(**settings.overrides_from(parser.parse_args([flag, *flag_args]), cls))
        assert getattr(by_flag, field.name) == value, (field.name, flag)
        by_env = settings.from_env(cls, prefix, env={f"{prefix}{field.name.upper()}": env_value})
        assert getattr(by_env, field.name) == value, (field.name, env_value)
        both = settings.from_env(cls, prefix, env={f"{prefix}{field.name.upper()}": env_value},
                                 **{field.name: default})
        assert getattr(both, field.name) == default, f"the flag beats the environment: {field.name}"
        assert docs.get(field.name), f"{cls.__name__}.{field.name} has no docstring (it is the flag's help)"


@pytest.mark.parametrize(("main", "cls", "prefix"), SERVERS)
def test_flags_not_given_leave_the_environment_alone(main: ModuleType, cls: type, prefix: str) -> None:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    assert settings.overrides_from(parser.parse_args([]), cls) == {}
    config = settings.from_env(cls, prefix, env={f"{prefix}HOST": "0.0.0.0"},
                               **settings.overrides_from(parser.parse_args([]), cls))
    assert config.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["coordinator"], {}, ["--shards / SHARDSEARCH_COORDINATOR_SHARDS", "--shard-pattern"]),
        (["coordinator", "--shards", "a:1"], {"SHARDSEARCH_COORDINATOR_PORT": "abc"},
         ["SHARDSEARCH_COORDINATOR_PORT='abc'", "--port"]),
        (["coordinator", "--shards", "a:1", "--cache", "memcached"], {}, ["--cache / SHARDSEARCH_COORDINATOR_CACHE"]),
        (["coordinator", "--shards", "a:1", "--log-format", "xml"], {}, ["--log-format"]),
        (["coordinator", "--shards", "a:1", "--batch-max-size", "0"], {}, ["--batch-"]),
        (["shard"], {"SHARDSEARCH_SHARD_USE_GPU": "maybe"}, ["SHARDSEARCH_SHARD_USE_GPU='maybe'", "--use-gpu"]),
        (["shard", "--peer-pattern", "s-{i}:1", "--replicas", "2", "--ordinal", "0"], {}, ["--peer-pattern"]),
        (["shard", "--auth-token-file", "/does/not/exist", "--port", "0", "--metrics-port", "-1"], {},
         ["/does/not/exist"]),
    ],
    ids=["no-shards", "env-not-int", "cache-kind", "log-format", "batching", "env-not-bool", "pattern", "token-file"],
)
def test_a_configuration_error_is_one_line_and_exit_2(args: list[str], env: dict[str, str], names: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "shardsearch", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"shardsearch {args[0]}: error: ")
    for name in names:
        assert name in lines[0], lines[0]
