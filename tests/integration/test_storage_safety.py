"""What the shards' storage promises, through real processes with real data directories: damage inside a log is
refused (or re-seeded from a peer), never cut away; a full disk fails writes cleanly and loses nothing
acknowledged; collection names never collide with the store's own files."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from shardsearch import codec
from shardsearch.tools.local import LocalCluster
from shardsearch.v1 import search_pb2, shard_pb2, shard_pb2_grpc
from tests.integration.conftest import connect, create, retry_until_ok, upsert, wait_until

DIM = 32
N = 1000


def items(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    return [f"id{i}" for i in range(n)], np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def newest_segment(data_dir: Path, collection: str) -> Path:
    segments = sorted((data_dir / "collections" / f"c-{collection}").glob("wal-*.log"),
                      key=lambda p: int(p.stem.split("-")[1]))
    return segments[-1]


def flip_byte(path: Path, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0x5A
    path.write_bytes(bytes(data))


def kill(cluster: LocalCluster, index: int) -> None:
    proc = cluster.shard_procs[index]
    proc.signal(signal.SIGKILL)
    proc.popen.wait()  # type: ignore[union-attr]


def test_damage_inside_the_newest_log_segment_is_data_loss_never_cut_off() -> None:
    with LocalCluster(shards=1) as cluster:
        stub = connect(cluster)
        create(stub, "hurt", DIM)
        create(stub, "fine", DIM)
        ids, vectors = items(N)
        upsert(stub, "hurt", ids, vectors, batch=10)  # 100 log records, each acknowledged
        upsert(stub, "fine", ids[:10], vectors[:10])
        kill(cluster, 0)
        assert cluster.run_dir is not None
        segment = newest_segment(cluster.run_dir / "shard-0-data", "hurt")
        flip_byte(segment, 0.3)
        damaged = segment.read_bytes()
        cluster.restart_shard(0)
        retry_until_ok(lambda: stub.ListCollections(search_pb2.ListCollectionsRequest()))

        calls = [
            lambda: stub.Get(search_pb2.GetRequest(collection="hurt", ids=ids[:5])),
            lambda: stub.Search(search_pb2.SearchRequest(collection="hurt", vector_f32=codec.pack(vectors[0]), k=5)),
            lambda: stub.Upsert(search_pb2.UpsertRequest(collection="hurt", items=[
                search_pb2.Item(id="new", vector_f32=codec.pack(vectors[0]))])),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as failure:
                call()
            assert failure.value.code() == grpc.StatusCode.DATA_LOSS
            assert segment.name in failure.value.details() and "at byte" in failure.value.details()
        assert segment.read_bytes() == damaged  # nothing was truncated away
        assert len(stub.Get(search_pb2.GetRequest(collection="fine", ids=ids[:10])).items) == 10  # others serve

        # The way out an operator has: drop it (its folder goes) and write it again.
        stub.DropCollection(search_pb2.DropCollectionRequest(name="hurt"))
        assert not segment.exists()
        create(stub, "hurt", DIM)
        upsert(stub, "hurt", ids[:10], vectors[:10])
        assert len(stub.Get(search_pb2.GetRequest(collection="hurt", ids=ids)).items) == 10


def test_a_replica_with_a_damaged_log_is_reseeded_from_its_peer() -> None:
    with LocalCluster(shards=1, replicas=2) as cluster:
        stub = connect(cluster)
        create(stub, "hurt", DIM)
        ids, vectors = items(N)
        upsert(stub, "hurt", ids, vectors, batch=10)
        kill(cluster, 0)
        assert cluster.run_dir is not None
        data_dir = cluster.run_dir / "shard-0-0-data"
        segment = newest_segment(data_dir, "hurt")
        flip_byte(segment, 0.3)
        cluster.restart_shard(0)  # returns once it serves: after it has copied its peer

        aside = list((data_dir / "damaged").iterdir())
        assert len(aside) == 1 and aside[0].name.startswith("hurt-")
        assert (aside[0] / segment.name).read_bytes()  # kept for inspection
        with grpc.insecure_channel(cluster.replica(0, 0).address) as channel:
            shard = shard_pb2_grpc.ShardServiceStub(channel)
            reply = shard.Get(shard_pb2.ShardGetRequest(collection="hurt", ids=ids))
        assert sorted(reply.ids) == sorted(ids)
        assert np.array_equal(codec.unpack(reply.vectors_f32, DIM)[[reply.ids[:].index(i) for i in ids[:50]]],
                              vectors[:50])


def test_collection_names_that_look_like_the_stores_own_files_survive_a_restart() -> None:
    with LocalCluster(shards=1) as cluster:
        stub = connect(cluster)
        ids, vectors = items(20)
        for name, count in (("a.creating", 10), ("a", 5), ("a.tmp", 3), ("trash", 2)):
            create(stub, name, DIM)
            upsert(stub, name, ids[:count], vectors[:count])
        for bad in ("a\n", "b\x00", "tab\tname"):
            with pytest.raises(grpc.RpcError) as failure:
                create(stub, bad, DIM)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in failure.value.details()
        cluster.restart_shard(0)
        retry_until_ok(lambda: stub.ListCollections(search_pb2.ListCollectionsRequest()))
        for name, count in (("a.creating", 10), ("a", 5), ("a.tmp", 3), ("trash", 2)):
            assert len(stub.Get(search_pb2.GetRequest(collection=name, ids=ids)).items) == count, name


@contextlib.contextmanager
def small_volume(size: str) -> Iterator[Path]:
    """A tmpfs of `size` (the shard's data volume, to fill up). Needs root, as CI and this project's machines have."""
    mount = Path(tempfile.mkdtemp(prefix="shardsearch-volume-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (this test needs root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_a_full_disk_fails_writes_cleanly_and_loses_nothing_acknowledged() -> None:
    with small_volume("3m") as volume, LocalCluster(shards=1, durable=False,
                                                    shard_args=["--data-dir", str(volume / "data"),
                                                                "--snapshot-wal-bytes", "400000"]) as cluster:
        stub = connect(cluster)
        create(stub, "filler", DIM)
        create(stub, "main", DIM)
        rng = np.random.default_rng(1)
        filler = rng.standard_normal((2000, DIM)).astype(np.float32)
        upsert(stub, "filler", [f"f{i}" for i in range(2000)], filler, batch=500)  # ~0.3 MB to free later

        acked: dict[str, np.ndarray] = {}
        refused: list[str] = []
        batch = streak = 0
        while streak < 3:  # refused three times in a row: the volume is full
            ids = [f"m{batch}-{i}" for i in range(50)]
            vectors = rng.standard_normal((50, DIM)).astype(np.float32)
            try:
                stub.Upsert(search_pb2.UpsertRequest(collection="main", items=[
                    search_pb2.Item(id=i, vector_f32=codec.pack(v)) for i, v in zip(ids, vectors)]), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert "disk is full" in exc.details()
                refused.extend(ids)
                streak += 1
            else:  # (a write may fit after a refused one: a snapshot frees the log it covers)
                acked.update(zip(ids, vectors))
                streak = 0
            batch += 1
            assert batch < 5000, "the volume never filled"
        assert len(acked) > 1000
        assert not stub.Get(search_pb2.GetRequest(collection="main", ids=refused)).items  # nothing half-applied
        log = cluster.shard_procs[0].log_path.read_text()
        assert "Traceback" not in log
        print(f"{len(acked)} items acknowledged, then {len(refused)} refused; snapshots: "
              f"{log.count('snapshot at')} written, {log.count('snapshot of collection main failed')} failed")

        stub.DropCollection(search_pb2.DropCollectionRequest(name="filler"))  # free space: writes work again
        stub.Upsert(search_pb2.UpsertRequest(collection="main", items=[
            search_pb2.Item(id="after", vector_f32=codec.pack(filler[0]))]), timeout=10)
        acked["after"] = filler[0]

        kill(cluster, 0)
        cluster.restart_shard(0)
        want = sorted(acked)
        asked = want + refused
        found = [item for lo in range(0, len(asked), 5000) for item in retry_until_ok(
            lambda: stub.Get(search_pb2.GetRequest(collection="main", ids=asked[lo : lo + 5000]))).items]
        assert sorted(item.id for item in found) == want
        assert all(np.array_equal(codec.unpack(item.vector_f32, DIM)[0], acked[item.id]) for item in found)


def test_a_replica_down_longer_than_the_delete_retention_reseeds_instead_of_bringing_deletes_back() -> None:
    """Replica B misses a delete; by the time it returns, A's snapshot has dropped the marker (retention 2 s here,
    7 days by default). B must not rejoin with the deleted item: it re-seeds from A."""
    retention = ["--delete-retention-s", "2", "--snapshot-wal-bytes", "20000"]
    with LocalCluster(shards=1, replicas=2, shard_args=retention) as cluster:
        stub = connect(cluster)
        create(stub, "kept", DIM)
        ids, vectors = items(300)
        upsert(stub, "kept", ids[:100], vectors[:100])
        a, b = cluster.replica(0, 0), cluster.replica(0, 1)
        b.stop()
        stub.Delete(search_pb2.DeleteRequest(collection="kept", ids=["id5"]))  # acknowledged by A alone
        time.sleep(2.5)  # the marker is now past its retention
        upsert(stub, "kept", ids[100:], vectors[100:], batch=20)  # A's log grows: a snapshot drops the marker
        wait_until(lambda: "snapshot at" in a.log_path.read_text(), "a snapshot on replica A")
        cluster._restart(b, 30.0)
        with grpc.insecure_channel(b.address) as channel:
            held = shard_pb2_grpc.ShardServiceStub(channel).Get(shard_pb2.ShardGetRequest(collection="kept", ids=ids))
        assert "id5" not in held.ids
        assert sorted(held.ids) == sorted(set(ids) - {"id5"})
        assert "longer than the delete-marker retention" in b.log_path.read_text()


def test_a_replica_whose_disk_fills_refuses_reads_until_it_has_caught_up() -> None:
    """Replica B's volume fills while A's does not: writes are acknowledged by A (quorum 1), B knows it missed
    them and refuses reads (it must not serve stale data after the catch-up wait); once space is freed it copies A
    and serves everything."""
    run_dir = Path(tempfile.mkdtemp(prefix="shardsearch-"))
    (run_dir / "shard-0-1-data").mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(run_dir / "shard-0-1-data")],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (this test needs root): {done.stderr}"
    try:
        with LocalCluster(shards=1, replicas=2, run_dir=run_dir,
                          shard_args=["--anti-entropy-s", "600", "--catch-up-wait-s", "1"]) as cluster:
            stub = connect(cluster)
            create(stub, "filler", DIM)
            create(stub, "main", DIM)
            rng = np.random.default_rng(2)
            upsert(stub, "filler", [f"f{i}" for i in range(3000)],
                   rng.standard_normal((3000, DIM)).astype(np.float32))
            b = cluster.replica(0, 1)
            acked: list[str] = []
            batch = 0
            while "disk is full" not in b.log_path.read_text():
                ids = [f"m{batch}-{i}" for i in range(100)]
                upsert(stub, "main", ids, rng.standard_normal((100, DIM)).astype(np.float32))  # A acknowledges
                acked.extend(ids)
                batch += 1
                assert batch < 500, "replica B's volume never filled"
            for _ in range(3):  # more acknowledged writes that B cannot have
                ids = [f"late{batch}-{i}" for i in range(100)]
                upsert(stub, "main", ids, rng.standard_normal((100, DIM)).astype(np.float32))
                acked.extend(ids)
                batch += 1
            time.sleep(2)  # past --catch-up-wait-s: B must still refuse, it knows it is behind
            with grpc.insecure_channel(b.address) as channel:
                with pytest.raises(grpc.RpcError) as failure:
                    shard_pb2_grpc.ShardServiceStub(channel).Get(shard_pb2.ShardGetRequest(collection="main",
                                                                                           ids=acked[-5:]))
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value.details()
            got = stub.Get(search_pb2.GetRequest(collection="main", ids=acked[-1000:]), timeout=10)  # from A
            assert len(got.items) == min(1000, len(acked))

            stub.DropCollection(search_pb2.DropCollectionRequest(name="filler"))  # frees B's volume
            try:
                wait_until(lambda: set(acked) <= held(b.address, "main", acked), "replica B to catch up", 30)
            except AssertionError:
                print(b.log_tail(30))
                raise
    finally:
        subprocess.run(["umount", "-l", str(run_dir / "shard-0-1-data")], check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


def held(address: str, collection: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    with grpc.insecure_channel(address) as channel:
        for lo in range(0, len(ids), 5000):
            try:
                reply = shard_pb2_grpc.ShardServiceStub(channel).Get(
                    shard_pb2.ShardGetRequest(collection=collection, ids=ids[lo : lo + 5000]), timeout=10)
            except grpc.RpcError:
                return set()
            found.update(reply.ids)
    return found
