"""Durability for one shard: per collection, its definition, a write-ahead log in segments, and snapshots.

Layout under the shard's data directory::

    collections/c-<name>/spec.pb            the Collection definition (written once, atomically)
    collections/c-<name>/wal-<first seq>.log  log segments, replayed in order
    collections/c-<name>/snapshot.npz       the collection's state up to a log sequence number

A log record is `length (u32) | crc32 (u32) | seq (u64) | kind (u8) | payload`, the payload being the shard RPC's
own request message (ShardUpsertRequest or ShardDeleteRequest). The CRC covers seq, kind and payload, so a record
torn by a crash mid-write (short, or with garbage) is detected; it can only be the last one of the last segment,
because a write is acknowledged only after its record is fsynced. Replay stops there and cuts the torn tail off.

Every write is appended and fsynced before it is applied and acknowledged; concurrent writes share one fsync (the
caller batches them). A snapshot rotates the log first, so the segments it covers hold nothing newer, and they are
deleted once the snapshot file has been renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from shardsearch.v1 import search_pb2

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQB")  # payload length, crc32(seq | kind | payload), seq, kind
UPSERT, DELETE = 1, 2
MAX_RECORD_BYTES = 1 << 30


class CorruptLog(Exception):
    """A damaged record before the end of the log: replaying past it could resurrect or lose data."""


@dataclass(frozen=True)
class Record:
    seq: int
    kind: int
    payload: bytes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file, fsyncs it, renames it over `path` and fsyncs the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _encode(seq: int, kind: int, payload: bytes) -> bytes:
    body = struct.pack("<QB", seq, kind) + payload
    return struct.pack("<II", len(payload), zlib.crc32(body)) + body


def _read_segment(path: Path, last: bool) -> tuple[list[Record], int]:
    """Records of one segment and the byte offset after the last good one."""
    data = path.read_bytes()
    records, offset = [], 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            break
        length, crc, seq, kind = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data) or zlib.crc32(data[offset + 8 : end]) != crc:
            break
        records.append(Record(seq, kind, data[offset + HEADER.size : end]))
        offset = end
    if offset < len(data) and not last:
        raise CorruptLog(f"{path}: damaged record at byte {offset} of {len(data)}, before the end of the log")
    return records, offset


class Wal:
    """The log segments of one collection. Not thread-safe: the caller serialises appends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file = None
        self.bytes_since_snapshot = 0

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("wal-*.log"), key=lambda p: int(p.stem.split("-")[1]))

    def replay(self, after: int) -> Iterator[Record]:
        """Yields every intact record with seq > `after`; cuts a torn tail off the last segment."""
        segments = self.segments()
        for i, path in enumerate(segments):
            last = i == len(segments) - 1
            records, good = _read_segment(path, last)
            self.bytes_since_snapshot += good
            if last and good < path.stat().st_size:
                logger.warning("%s: torn record after byte %d (crash mid-write); cut off", path, good)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            for record in records:
                if record.seq > after:
                    yield record

    def append(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Appends (seq, kind, payload) records and fsyncs once for all of them."""
        if self._file is None:
            segments = self.segments()
            if segments:
                self._file = open(segments[-1], "ab")
            else:
                self._open_segment(records[0][0])
        assert self._file is not None
        data = b"".join(_encode(*record) for record in records)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.bytes_since_snapshot += len(data)

    def _open_segment(self, first_seq: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.folder / f"wal-{first_seq}.log", "ab")
        fsync_dir(self.folder)

    def rotate(self, next_seq: int) -> list[Path]:
        """Starts a new segment for records from `next_seq` on; returns the older segments (a snapshot covers them)."""
        older = self.segments()
        self._open_segment(next_seq)
        self.bytes_since_snapshot = 0
        return [p for p in older if p.name != f"wal-{next_seq}.log"]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CollectionStore:
    """One collection's folder: its spec, its log, its snapshot."""

    def __init__(self, folder: Path, spec: search_pb2.Collection) -> None:
        self.folder = folder
        self.spec = spec
        self.wal = Wal(folder)
        self.seq = 0  # last sequence number logged

    @property
    def snapshot_path(self) -> Path:
        return self.folder / "snapshot.npz"

    def log(self, entries: Sequence[tuple[int, bytes]]) -> None:
        """Appends (kind, payload) entries durably, numbering them in order."""
        records = [(self.seq + 1 + i, kind, payload) for i, (kind, payload) in enumerate(entries)]
        self.wal.append(records)
        self.seq += len(records)

    def destroy(self) -> None:
        self.wal.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        fsync_dir(self.folder.parent)


class Storage:
    """The shard's data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "collections").mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        return self.root / "collections" / f"c-{name}"  # the prefix keeps names like ".." inside

    def create(self, spec: search_pb2.Collection) -> CollectionStore:
        folder = self.folder(spec.name)
        if folder.exists():  # left over from a drop interrupted by a crash
            shutil.rmtree(folder)
        tmp = folder.with_name(folder.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_atomically(tmp / "spec.pb", spec.SerializeToString())
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        return CollectionStore(folder, spec)

    def existing(self) -> list[CollectionStore]:
        stores = []
        for folder in sorted((self.root / "collections").glob("c-*")):
            spec_path = folder / "spec.pb"
            if folder.name.endswith(".creating") or not spec_path.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a create that never finished
                continue
            stores.append(CollectionStore(folder, search_pb2.Collection.FromString(spec_path.read_bytes())))
        return stores
