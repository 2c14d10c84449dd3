"""A shard pod derives its name and peers from the coordinator's pattern and its StatefulSet ordinal."""

from __future__ import annotations

import pytest

from shardsearch.config import from_env
from shardsearch.coordinator.config import CoordinatorConfig
from shardsearch.shard_server.__main__ import add_arguments
from shardsearch.shard_server.config import ENV_PREFIX, ShardConfig, ordinal_of

PATTERN = "shard-{n}.shard.search.svc.cluster.local:50061"


def test_ordinal_7_with_two_replicas_is_replica_1_of_shard_3() -> None:
    config = ShardConfig(peer_pattern=PATTERN, replicas=2, shard_count=4).with_topology("shard-7")
    assert config.name == "shard-3"
    assert config.peers == ("shard-6.shard.search.svc.cluster.local:50061",)
    assert config.ordinal == 7


@pytest.mark.parametrize(("shards", "replicas"), [(1, 1), (3, 1), (2, 2), (4, 3)])
def test_every_pod_agrees_with_the_coordinators_expansion(shards: int, replicas: int) -> None:
    expected = CoordinatorConfig(shard_pattern=PATTERN, shard_count=shards, replicas=replicas).shard_addresses()
    for n in range(shards * replicas):
        config = ShardConfig(peer_pattern=PATTERN, replicas=replicas, shard_count=shards).with_topology(f"shard-{n}")
        name, addresses = expected[n // replicas]
        own = PATTERN.format(n=n)
        assert config.name == name
        assert own in addresses
        assert config.peers == tuple(a for a in addresses if a != own)


def test_without_a_pattern_the_config_is_unchanged() -> None:
    config = ShardConfig(name="alpha", peers=("10.0.0.2:50061",))
    assert config.with_topology("whatever") is config


def test_resolving_twice_is_a_no_op() -> None:
    once = ShardConfig(peer_pattern=PATTERN, replicas=3).with_topology("shard-4")
    assert once.with_topology("shard-0") == once
    assert once.peers == (PATTERN.format(n=3), PATTERN.format(n=5))


def test_an_explicit_ordinal_beats_the_host_name() -> None:
    assert ShardConfig(peer_pattern=PATTERN, replicas=2, ordinal=1).with_topology("not-a-pod").name == "shard-0"


@pytest.mark.parametrize(
    ("config", "hostname", "message"),
    [
        (ShardConfig(peer_pattern=PATTERN, replicas=2, shard_count=2), "shard-4", "past shard_count"),
        (ShardConfig(peer_pattern="shard-{i}.shard:50061", replicas=2), "shard-0", "needs {r} or {n}"),
        (ShardConfig(peer_pattern=PATTERN, peers=("a:1",)), "shard-0", "either --peers .* or --peer-pattern"),
        (ShardConfig(peer_pattern=PATTERN, replicas=0), "shard-0", "at least 1"),
        (ShardConfig(peer_pattern=PATTERN), "laptop", "ordinal"),
    ],
)
def test_inconsistent_topologies_are_refused(config: ShardConfig, hostname: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.with_topology(hostname)


@pytest.mark.parametrize(("hostname", "ordinal"), [("shard-0", 0), ("shard-12", 12), ("my-shard-3.shard.ns", 3)])
def test_ordinal_of_host_names(hostname: str, ordinal: int) -> None:
    assert ordinal_of(hostname) == ordinal


def test_flags_and_environment_reach_the_derivation() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--peer-pattern", PATTERN, "--ordinal", "5"])
    overrides = {k: v for k, v in vars(args).items() if k in ShardConfig.__dataclass_fields__}
    env = {f"{ENV_PREFIX}REPLICAS": "2", f"{ENV_PREFIX}SHARD_COUNT": "3"}
    config = from_env(ShardConfig, ENV_PREFIX, env=env, **overrides).with_topology()
    assert (config.name, config.peers) == ("shard-2", (PATTERN.format(n=4),))


async def test_a_started_shard_takes_its_name_and_peers_from_the_pattern() -> None:
    from shardsearch.shard_server.server import start

    config = ShardConfig(
        port=0, metrics_port=-1, use_gpu=False, peer_pattern="127.0.0.1:1{n}", replicas=2, ordinal=3,
        catch_up_wait_s=60.0,
    )
    running = await start(config)
    try:
        assert running.servicer.name == "shard-1"
        assert running.replication is not None, "a replica with peers catches up before serving reads"
        assert running.servicer.catching_up  # its one peer (127.0.0.1:12) does not answer
    finally:
        await running.stop(grace=0)
