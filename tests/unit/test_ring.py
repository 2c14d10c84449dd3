import subprocess
import sys

import numpy as np
import pytest

from shardsearch.ring import Ring, hash64


@pytest.fixture(scope="module")
def ids() -> list[str]:
    rng = np.random.default_rng(7)
    return [f"item-{x:x}" for x in rng.integers(0, 2**62, 100_000)]


def test_four_shards_share_ids_within_ten_percent(ids: list[str]) -> None:
    ring = Ring([f"shard-{i}" for i in range(4)])
    counts = np.bincount(ring.owner_indices(ids), minlength=4)
    assert np.all(np.abs(counts / (len(ids) / 4) - 1) <= 0.10), counts


def test_adding_a_shard_moves_only_ids_to_the_new_shard(ids: list[str]) -> None:
    four = Ring([f"shard-{i}" for i in range(4)])
    five = four.with_shard("shard-4")
    before, after = four.owner_indices(ids), five.owner_indices(ids)
    moved = before != after
    assert 0.15 <= moved.mean() <= 0.25, moved.mean()
    assert np.all(after[moved] == 4), "an id moved between two old shards"


def test_removing_a_shard_moves_only_its_ids(ids: list[str]) -> None:
    four = Ring([f"shard-{i}" for i in range(4)])
    three = four.without_shard("shard-2")
    before = np.array(four.shards)[four.owner_indices(ids)]
    after = np.array(three.shards)[three.owner_indices(ids)]
    assert np.all(before[before != after] == "shard-2")


def test_single_lookup_matches_vectorised(ids: list[str]) -> None:
    ring = Ring(["a", "b", "c"])
    owners = ring.owner_indices(ids[:500])
    assert [ring.owner(i) for i in ids[:500]] == [ring.shards[o] for o in owners]


def test_hash_is_stable_across_processes() -> None:
    code = "from shardsearch.ring import hash64; print(hash64('doc-42'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert int(other.stdout) == hash64("doc-42")


def test_ring_rejects_bad_membership() -> None:
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring(["a", "a"])
