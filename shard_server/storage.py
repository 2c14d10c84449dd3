"""Durability for one shard: per collection, its definition, a write-ahead log in segments, and snapshots.

Layout under the shard's data directory::

    collections/c-<name>/spec.pb              the Collection definition (written once, atomically)
    collections/c-<name>/wal-<first seq>.log  log segments, replayed in order
    collections/c-<name>/snapshot.npz         the collection's state up to a log sequence number
    staging/<random>/                         a collection being created (renamed into collections/ when complete)
    trash/<random>/                           a dropped collection being deleted (renamed out of collections/ first)
    damaged/<name>-<unix ms>/                 a damaged collection set aside while it is re-seeded from a peer
    alive                                     when the shard was last up (a heartbeat, see Storage.last_alive)

Only complete collections live under collections/, and a folder there is one only if its spec names it, so no
collection name can collide with anything the store writes, and a create or a drop cut short by a crash leaves
nothing half-done that comes back.

A log record is `length (u32) | crc32 (u32) | seq (u64) | kind (u8) | payload`, the payload being the shard RPC's
own request message (ShardUpsertRequest or ShardDeleteRequest). The CRC covers seq, kind and payload. A write is
acknowledged only after its record is fsynced, so a crash mid-write can only leave a torn record at the very end of
the last segment: replay cuts that off. A damaged record anywhere else (an intact record follows it, or it is in an
older segment) is corruption: replay raises CorruptLog naming the file and the offset, and never truncates it.

A failed append (ENOSPC, EIO, a failed fsync) is never retried on the same file descriptor: the segment is cut back
to where the batch began and closed, the batch's sequence numbers are skipped for good, and the next append starts
a new segment. If the cut itself fails the log refuses every append until the shard restarts (replay then drops
the torn tail).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from shardsearch.v1 import search_pb2

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQB")  # payload length, crc32(seq | kind | payload), seq, kind
UPSERT, DELETE = 1, 2
MAX_RECORD_BYTES = 1 << 30


class CorruptLog(Exception):
    """A damaged record before the end of the log: replaying past it could resurrect or lose data."""


class WalFailed(OSError):
    """An append did not reach the disk; nothing of its batch is logged (or will be replayed)."""


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
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _encode(seq: int, kind: int, payload: bytes) -> bytes:
    body = struct.pack("<QB", seq, kind) + payload
    return struct.pack("<II", len(payload), zlib.crc32(body)) + body


def _intact(data: bytes, offset: int) -> int:
    """The end of the intact record at `offset`, or -1."""
    if len(data) - offset < HEADER.size:
        return -1
    length, crc, _, kind = HEADER.unpack_from(data, offset)
    end = offset + HEADER.size + length
    if kind not in (UPSERT, DELETE) or length > MAX_RECORD_BYTES or end > len(data):
        return -1
    return end if zlib.crc32(data[offset + 8 : end]) == crc else -1


def _intact_record_after(data: bytes, offset: int, last_seq: int, window: int = 1 << 22) -> int:
    """The offset of an intact record after `offset` with a later sequence number than `last_seq`, or -1.

    Candidates are found with numpy (the kind byte is 1 or 2 and the seq's top three bytes are zero, as they are for
    any log below 2**40 records), a window at a time, then checked with their CRC: a damaged 1 GB segment takes
    seconds to scan, and only at start-up."""
    view = np.frombuffer(data, dtype=np.uint8)
    last_start = len(data) - HEADER.size
    for lo in range(offset + 1, last_start + 1, window):
        starts = np.arange(lo, min(lo + window, last_start + 1))
        kind = view[starts + 16]
        mask = (kind == UPSERT) | (kind == DELETE)
        for byte in (13, 14, 15):
            mask &= view[starts + byte] == 0
        for start in starts[mask].tolist():
            if HEADER.unpack_from(data, start)[2] > last_seq and _intact(data, start) > 0:
                return start
    return -1


def _read_segment(path: Path, last: bool) -> tuple[list[Record], int]:
    """Records of one segment and the byte offset after the last good one (a torn tail may follow it)."""
    data = path.read_bytes()
    records: list[Record] = []
    offset = 0
    while offset < len(data):
        end = _intact(data, offset)
        if end < 0:
            break
        _, _, seq, kind = HEADER.unpack_from(data, offset)
        records.append(Record(seq, kind, data[offset + HEADER.size : end]))
        offset = end
    if offset < len(data):
        where = f"{path}: damaged record at byte {offset} of {len(data)}"
        if not last:
            raise CorruptLog(f"{where}, before the end of the log (in an older segment)")
        follower = _intact_record_after(data, offset, records[-1].seq if records else 0)
        if follower >= 0:
            raise CorruptLog(f"{where}, followed by an intact record at byte {follower}: not a torn tail")
    return records, offset


class Wal:
    """The log segments of one collection. Not thread-safe: the caller serialises appends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._size = 0  # bytes in the open segment
        self.bytes_since_snapshot = 0
        self.failure: str | None = None
        """Why the last append failed; set until an append succeeds."""
        self._stuck = False  # the failed append could not be cut back: no append until a restart

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("wal-*.log"), key=lambda p: int(p.stem.split("-")[1]))

    def replay(self, after: int) -> Iterator[Record]:
        """Yields every intact record with seq > `after`; cuts a torn tail off the last segment; raises CorruptLog
        (before yielding anything) if a record before the end is damaged."""
        segments = self.segments()
        read = [_read_segment(path, i == len(segments) - 1) for i, path in enumerate(segments)]
        for path, (records, good) in zip(segments, read):
            self.bytes_since_snapshot += good
            if good < path.stat().st_size:
                logger.warning("%s: torn record after byte %d (crash mid-write); cut off", path, good)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            for record in records:
                if record.seq > after:
                    yield record

    def append(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Appends (seq, kind, payload) records and fsyncs once for all of them; raises WalFailed if they did not
        all reach the disk (and then none of them will ever be replayed)."""
        if self._stuck:
            raise WalFailed(errno.EIO, f"{self.failure}; the log refuses writes until the shard restarts")
        data = b"".join(_encode(*record) for record in records)
        try:
            if self._fd is None:
                segments = self.segments()
                if segments and self.failure is None:
                    self._open(segments[-1], create=False)
                else:  # a fresh log, or a new segment after a failure: never the same file descriptor again
                    self._open(self.folder / f"wal-{records[0][0]}.log", create=True)
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
            raise WalFailed(exc.errno or errno.EIO, self.failure) from exc
        self._size += len(data)
        self.bytes_since_snapshot += len(data)
        self.failure = None

    def _fail(self, exc: OSError) -> None:
        self.failure = f"the write-ahead log of {self.folder.name} failed: {exc.strerror or exc}"
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, self._size)  # cut the partial batch back off, so no torn record sits mid-log
            os.fsync(fd)
        except OSError as cut:
            self._stuck = True
            logger.error("%s; cutting the partial batch off failed too (%s)", self.failure, cut.strerror or cut)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def _open(self, path: Path, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            if create:
                fsync_dir(self.folder)
        except OSError:
            os.close(fd)
            raise
        self.close()
        self._fd, self._size = fd, size

    def rotate(self, next_seq: int) -> list[Path]:
        """Starts a new segment for records from `next_seq` on; returns the older segments (a snapshot covers them)."""
        older = self.segments()
        self._open(self.folder / f"wal-{next_seq}.log", create=True)
        self.bytes_since_snapshot = 0
        return [p for p in older if p.name != f"wal-{next_seq}.log"]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CollectionStore:
    """One collection's folder: its spec, its log, its snapshot."""

    def __init__(self, folder: Path, spec: search_pb2.Collection, storage: "Storage") -> None:
        self.folder = folder
        self.spec = spec
        self.wal = Wal(folder)
        self.seq = 0  # last sequence number used (logged, or skipped by a failed append)
        self._storage = storage

    @property
    def snapshot_path(self) -> Path:
        return self.folder / "snapshot.npz"

    def log(self, entries: Sequence[tuple[int, bytes]]) -> None:
        """Appends (kind, payload) entries durably, numbering them in order. On WalFailed their numbers stay used:
        a later record never reuses the number of one that may be half on disk."""
        records = [(self.seq + 1 + i, kind, payload) for i, (kind, payload) in enumerate(entries)]
        self.seq += len(records)
        self.wal.append(records)

    def destroy(self) -> None:
        """Renames the folder out of collections/ (one atomic step: a crash after it leaves no collection), then
        deletes it."""
        self.wal.close()
        self._storage.discard(self.folder)

    def set_aside(self) -> Path:
        """Moves a damaged collection's folder to damaged/ (kept for inspection; nothing reads it again)."""
        self.wal.close()
        target = self._storage.root / "damaged" / f"{self.spec.name}-{int(time.time() * 1000)}"
        target.parent.mkdir(exist_ok=True)
        os.replace(self.folder, target)
        fsync_dir(self.folder.parent)
        return target


class Storage:
    """The shard's data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("collections", "staging", "trash"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def alive_path(self) -> Path:
        return self.root / "alive"

    def mark_alive(self) -> None:
        """Records that this shard is up now (see last_alive)."""
        write_atomically(self.alive_path, str(time.time_ns()).encode())

    def last_alive(self) -> float | None:
        """When the shard that used this directory was last up (unix seconds): its heartbeat file, else the newest
        file in it (a directory from before heartbeats); None for an empty directory."""
        try:
            return int(self.alive_path.read_bytes()) / 1e9
        except (OSError, ValueError):
            pass
        times = [p.stat().st_mtime for p in self.root.rglob("*") if p.is_file()]
        return max(times) if times else None

    def folder(self, name: str) -> Path:
        return self.root / "collections" / f"c-{name}"  # the prefix keeps names like ".." inside

    def create(self, spec: search_pb2.Collection) -> CollectionStore:
        folder = self.folder(spec.name)
        if folder.exists():
            raise FileExistsError(errno.EEXIST, f"{folder} exists: collection {spec.name!r} is already stored")
        tmp = self.root / "staging" / uuid.uuid4().hex
        try:
            tmp.mkdir()
            write_atomically(tmp / "spec.pb", spec.SerializeToString())
            os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(folder.parent)
        return CollectionStore(folder, spec, self)

    def discard(self, folder: Path) -> None:
        trash = self.root / "trash" / uuid.uuid4().hex
        os.rename(folder, trash)
        fsync_dir(folder.parent)
        fsync_dir(trash.parent)
        _remove(trash)

    def existing(self) -> list[CollectionStore]:
        """The stored collections; clears what interrupted creates and drops left behind."""
        for sub in ("staging", "trash"):
            for leftover in (self.root / sub).iterdir():
                _remove(leftover)
        stores = []
        for folder in sorted((self.root / "collections").iterdir()):
            spec_path = folder / "spec.pb"
            spec = search_pb2.Collection.FromString(spec_path.read_bytes()) if spec_path.is_file() else None
            if spec is None or folder.name != f"c-{spec.name}":
                # Not a collection: an older version's unfinished create ("c-<name>.creating") or a stray folder.
                logger.warning("%s is not a stored collection (no spec naming it); moved to trash", folder)
                self.discard(folder)
                continue
            stores.append(CollectionStore(folder, spec, self))
        return stores


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
