"""`python -m shardsearch.coordinator` / `shardsearch coordinator`: run the public SearchService over a set of shards.

Every setting is a field of CoordinatorConfig: a flag (`--field-name`) and an environment variable
(`SHARDSEARCH_COORDINATOR_FIELD_NAME`); flags win."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from shardsearch import config as settings
from shardsearch import security
from shardsearch.coordinator.config import ENV_PREFIX, CoordinatorConfig
from shardsearch.process import die_with_parent_if_asked

PROG = "shardsearch coordinator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_config_arguments(parser, CoordinatorConfig, ENV_PREFIX)


def config_from(args: argparse.Namespace) -> CoordinatorConfig:
    """The configuration: defaults < environment < the flags given; raises ConfigError naming a bad setting."""
    config = CoordinatorConfig.from_env(**settings.overrides_from(args, CoordinatorConfig))
    config.validate()
    return config


def run(args: argparse.Namespace) -> None:
    die_with_parent_if_asked()
    with settings.config_errors(PROG):
        config = config_from(args)
    config.setup_logging()
    with settings.config_errors(PROG):  # every certificate, key and token file the settings name, before serving
        security.check_files(config, "shard_")
    from shardsearch.coordinator.server import serve
    from shardsearch.encoder_client import EncoderNotReady
    from shardsearch.errors import FailedPrecondition

    try:
        asyncio.run(serve(config))
    except (EncoderNotReady, FailedPrecondition) as exc:  # the encoder is missing or unusable: say which and why
        logging.getLogger("shardsearch.coordinator").error("cannot start: %s", exc)
        sys.exit(1)


main = settings.command(PROG, __doc__, add_arguments, run)


if __name__ == "__main__":
    main()
