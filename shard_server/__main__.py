"""`python -m shardsearch.shard_server` / `shardsearch shard`: run one shard server.

Every setting is a field of ShardConfig: a flag (`--field-name`) and an environment variable
(`SHARDSEARCH_SHARD_FIELD_NAME`); flags win."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os

from shardsearch import config as settings
from shardsearch import security
from shardsearch.process import die_with_parent_if_asked
from shardsearch.shard_server import memory
from shardsearch.shard_server.config import ENV_PREFIX, ShardConfig

PROG = "shardsearch shard"
NO_FAISS = ("no FAISS build is installed: pip install 'shardsearch[cpu]' (or 'shardsearch[gpu]' for the GPU build; "
            "never both)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_config_arguments(parser, ShardConfig, ENV_PREFIX, aliases={"use_gpu": ["--gpu"]})


def config_from(args: argparse.Namespace) -> ShardConfig:
    """The configuration: defaults < environment < the flags given, with name and peers derived from peer_pattern;
    raises ConfigError naming a bad setting."""
    config = ShardConfig.from_env(**settings.overrides_from(args, ShardConfig))
    config.validate()
    return config.with_topology()


def run(args: argparse.Namespace) -> None:
    die_with_parent_if_asked()
    with settings.config_errors(PROG):
        config = config_from(args)
        if importlib.util.find_spec("faiss") is None:
            raise settings.ConfigError(NO_FAISS)
    config.setup_logging()
    with settings.config_errors(PROG):  # every certificate, key and token file the settings name, before serving
        security.check_files(config, "peer_")
    if config.omp_threads > 0:  # must precede the first FAISS import: OpenMP reads it once
        os.environ["OMP_NUM_THREADS"] = str(config.omp_threads)
    memory.configure()  # before the servers' threads start (see shard_server/memory.py)
    asyncio.run(serve_config(config))


async def serve_config(config: ShardConfig) -> None:
    from shardsearch.shard_server.server import serve  # imports FAISS only after OMP_NUM_THREADS is settled

    await serve(config)


main = settings.command(PROG, __doc__, add_arguments, run)


if __name__ == "__main__":
    main()
