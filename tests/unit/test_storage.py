"""The write-ahead log, snapshots and recovery on a real filesystem: torn tails, corruption, truncation."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shardsearch import codec
from shardsearch.shard_server.storage import DELETE, UPSERT, CorruptLog, Storage, Wal
from shardsearch.shard_server.writes import Writer
from shardsearch.v1 import search_pb2, shard_pb2

SPEC = search_pb2.Collection(name="c", dim=8, index=search_pb2.IndexOptions(train_threshold=500))


def test_replay_returns_records_in_order_after_a_position(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    wal.append([(1, UPSERT, b"a"), (2, DELETE, b"b")])
    wal.append([(3, UPSERT, b"c")])
    wal.close()
    assert [(r.seq, r.kind, r.payload) for r in Wal(tmp_path).replay(1)] == [(2, DELETE, b"b"), (3, UPSERT, b"c")]


@pytest.mark.parametrize("damage", ["short", "garbage"])
def test_a_torn_last_record_is_ignored_and_cut_off(tmp_path: Path, damage: str) -> None:
    wal = Wal(tmp_path)
    wal.append([(1, UPSERT, b"kept"), (2, UPSERT, b"torn" * 100)])
    wal.close()
    (segment,) = wal.segments()
    data = segment.read_bytes()
    if damage == "short":
        segment.write_bytes(data[:-50])  # the crash came mid-write
    else:
        segment.write_bytes(data[:-3] + b"\xff\xff\xff")  # complete length, wrong checksum
    assert [r.payload for r in Wal(tmp_path).replay(0)] == [b"kept"]
    again = Wal(tmp_path)
    assert [r.payload for r in again.replay(0)] == [b"kept"]  # the tail is gone for good
    again.append([(2, UPSERT, b"next")])  # and new records follow the good ones
    again.close()
    assert [r.payload for r in Wal(tmp_path).replay(0)] == [b"kept", b"next"]


def test_damage_before_the_end_of_the_log_refuses_to_replay(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    wal.append([(1, UPSERT, b"a" * 64)])
    wal.rotate(2)
    wal.append([(2, UPSERT, b"b")])
    wal.close()
    first = wal.segments()[0]
    data = bytearray(first.read_bytes())
    data[30] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match="before the end of the log"):
        list(Wal(tmp_path).replay(0))


def upsert_request(ids: list[str], vectors: np.ndarray) -> shard_pb2.ShardUpsertRequest:
    return shard_pb2.ShardUpsertRequest(collection="c", ids=ids, vectors_f32=codec.pack(vectors),
                                        payloads=[i.encode() for i in ids])


async def test_snapshot_and_log_recover_exactly_and_truncate_the_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    executor = ThreadPoolExecutor(2)
    writer = Writer(executor, Storage(tmp_path), snapshot_bytes=1 << 40, registry=CollectorRegistry())
    from shardsearch.shard_server.index import Collection

    coll = Collection(SPEC)
    await writer.create(SPEC)
    expected: dict[str, np.ndarray] = {}
    for round_ in range(6):
        ids = [f"{round_}-{i}" for i in range(300)]
        vectors = rng.standard_normal((300, 8)).astype(np.float32)
        await asyncio.gather(*(  # concurrent writes share fsyncs
            writer.upsert(coll, upsert_request(ids[j : j + 50], vectors[j : j + 50]), ids[j : j + 50],
                          vectors[j : j + 50], [i.encode() for i in ids[j : j + 50]], 60)
            for j in range(0, 300, 50)
        ))
        expected.update(zip(ids, vectors))
        gone = [f"{round_}-{i}" for i in range(0, 300, 7)]
        await writer.delete(coll, shard_pb2.ShardDeleteRequest(collection="c", ids=gone), gone, 60)
        for i in gone:
            del expected[i]
        if round_ == 2:
            coll.maintain()  # trained state goes into the snapshot
            await writer.snapshot(coll)
            assert len(writer._stores["c"].wal.segments()) == 1  # the covered segments are gone
    await writer.close()

    recovered = Writer(executor, Storage(tmp_path), 1 << 40, CollectorRegistry()).recover(use_gpu=False)
    assert [c.spec for c in recovered] == [SPEC]
    (again,) = recovered
    assert again.live == len(expected) and again.info().trained
    ids = sorted(expected)
    found, vectors, payloads = again.get(ids + ["0-0"])
    assert found == ids and np.array_equal(vectors, np.stack([expected[i] for i in ids]))
    assert payloads == [i.encode() for i in ids]
    executor.shutdown()


async def test_a_crash_mid_snapshot_loses_nothing(tmp_path: Path) -> None:
    """Captured and rotated, but the snapshot file never made it: the log segments still hold everything."""
    from shardsearch.shard_server.index import Collection

    executor = ThreadPoolExecutor(1)
    writer = Writer(executor, Storage(tmp_path), 1 << 40, CollectorRegistry())
    coll = Collection(SPEC)
    await writer.create(SPEC)
    vectors = np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32)
    ids = [str(i) for i in range(100)]
    await writer.upsert(coll, upsert_request(ids[:50], vectors[:50]), ids[:50], vectors[:50], [], 60)
    store = writer._stores["c"]
    store.wal.rotate(store.seq + 1)  # what a snapshot does first
    (store.folder / "snapshot.npz.tmp").write_bytes(b"half a zip file")  # then the crash
    await writer.upsert(coll, upsert_request(ids[50:], vectors[50:]), ids[50:], vectors[50:], [], 60)
    await writer.close()
    (again,) = Writer(executor, Storage(tmp_path), 1 << 40, CollectorRegistry()).recover(use_gpu=False)
    found, got, _ = again.get(ids)
    assert found == ids and np.array_equal(got, vectors)
    executor.shutdown()


def test_damage_mid_segment_followed_by_intact_records_is_corruption_and_the_file_stays(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    for seq in range(1, 101):
        wal.append([(seq, UPSERT, f"record {seq}".encode() * 10)])
    wal.close()
    (segment,) = wal.segments()
    data = bytearray(segment.read_bytes())
    data[len(data) * 3 // 10] ^= 0x01  # one bit, 30% into the newest segment
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match=r"damaged record at byte \d+ .*followed by an intact record at byte \d+"):
        list(Wal(tmp_path).replay(0))
    assert segment.read_bytes() == bytes(data)  # never cut away


def test_a_failed_append_is_cut_back_its_numbers_skipped_and_the_next_goes_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC half-way through a batch: the partial bytes are cut off, the fd is never used again."""
    import errno
    import os

    from shardsearch.shard_server import storage
    from shardsearch.shard_server.storage import CollectionStore, WalFailed

    store = CollectionStore(tmp_path, SPEC, Storage(tmp_path / "root"))
    store.log([(UPSERT, b"one"), (UPSERT, b"two")])
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        monkeypatch.setattr(storage.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr(storage.os, "write", half_then_full)
    with pytest.raises(WalFailed, match="No space|full"):
        store.log([(UPSERT, b"lost" * 100), (DELETE, b"lost too")])
    assert store.seq == 4 and store.wal.failure
    monkeypatch.setattr(storage.os, "write", real_write)
    store.log([(DELETE, b"three")])
    store.wal.close()
    assert [p.name for p in store.wal.segments()] == ["wal-1.log", "wal-5.log"]
    assert [(r.seq, r.payload) for r in Wal(tmp_path).replay(0)] == [(1, b"one"), (2, b"two"), (5, b"three")]


def test_a_failed_fsync_is_never_retried_on_the_same_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from shardsearch.shard_server import storage
    from shardsearch.shard_server.storage import CollectionStore, WalFailed

    store = CollectionStore(tmp_path, SPEC, Storage(tmp_path / "root"))
    store.log([(UPSERT, b"one")])
    real_fsync = storage.os.fsync

    def failing_once(fd: int) -> None:
        monkeypatch.setattr(storage.os, "fsync", real_fsync)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", failing_once)
    with pytest.raises(WalFailed, match="Input/output error"):
        store.log([(UPSERT, b"maybe")])
    store.log([(UPSERT, b"two")])
    store.wal.close()
    assert [(r.seq, r.payload) for r in Wal(tmp_path).replay(0)] == [(1, b"one"), (3, b"two")]
    assert [p.name for p in store.wal.segments()] == ["wal-1.log", "wal-3.log"]

    def failing(fd: int) -> None:  # and the cut fails too: nothing more is appended until a restart
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", failing)
    with pytest.raises(WalFailed):
        store.log([(UPSERT, b"lost")])
    monkeypatch.setattr(storage.os, "fsync", real_fsync)
    with pytest.raises(WalFailed, match="until the shard restarts"):
        store.log([(UPSERT, b"refused")])
    assert [(r.seq, r.payload) for r in Wal(tmp_path).replay(0)][-1] == (3, b"two")


def test_a_collection_name_cannot_collide_with_the_stores_own_folders(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    for name in ("a.creating", "a", "a.tmp", "staging", "trash"):
        store = storage.create(search_pb2.Collection(name=name, dim=4))
        store.log([(UPSERT, name.encode())])
        store.wal.close()
    stores = Storage(tmp_path).existing()
    assert sorted(s.spec.name for s in stores) == ["a", "a.creating", "a.tmp", "staging", "trash"]
    for store in stores:
        assert [r.payload for r in store.wal.replay(0)] == [store.spec.name.encode()]


def test_interrupted_creates_and_drops_leave_nothing_behind(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    kept = storage.create(search_pb2.Collection(name="kept", dim=4))
    dropped = storage.create(search_pb2.Collection(name="dropped", dim=4))
    dropped.log([(UPSERT, b"x")])
    # A drop that crashed after its rename (and before the delete); a create that crashed before its rename; a
    # create of an older version ("c-<name>.creating" beside the collections).
    (tmp_path / "trash" / "half").mkdir()
    (tmp_path / "staging" / "half").mkdir()
    old = tmp_path / "collections" / "c-x.creating"
    old.mkdir()
    (old / "spec.pb").write_bytes(search_pb2.Collection(name="x", dim=4).SerializeToString())
    dropped.destroy()
    assert [s.spec.name for s in Storage(tmp_path).existing()] == ["kept"]
    assert not list((tmp_path / "trash").iterdir()) and not list((tmp_path / "staging").iterdir())
    assert kept.folder.exists() and not old.exists()


def test_names_with_a_trailing_newline_or_control_characters_are_refused() -> None:
    from shardsearch import validation
    from shardsearch.errors import InvalidArgument

    for name in ("a\n", "a\x00", "a\tb", "", "x" * 129, "a/b"):
        with pytest.raises(InvalidArgument, match="name"):
            validation.check_collection(search_pb2.Collection(name=name, dim=4))
