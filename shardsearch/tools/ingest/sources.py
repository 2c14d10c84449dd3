"""What `shardsearch ingest` reads: vector files, JSONL items and image folders, streamed as upsert-ready records.

Every reader is a generator that holds at most one chunk of rows (vectors), one line (JSONL) or one directory
listing and one file (images) at a time, so a source of any size loads in bounded memory. A row or line that cannot
be turned into an item becomes a `Record` with `error` set: it is reported as failed and the rest goes on. Problems
with the source as a whole (missing file, wrong shape, ids file of the wrong length) raise `SourceError` before any
item is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from shardsearch import codec
from shardsearch.v1 import search_pb2

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
VECTOR_EXTENSIONS = (".npy", ".fvecs")
CHUNK_ROWS = 4096
"""Rows read from a vector file at a time (a few MB at dim 128)."""
COUNT_LINES_MAX_BYTES = 1 << 30
"""JSONL files up to this size have their lines counted first (a fast byte scan) so the progress bar has a total."""
DEFAULT_BATCH = {"vectors": 256, "texts": 32, "images": 32}
"""Items per Upsert by source kind: texts and images are embedded by the coordinator, so their batches are smaller."""


class SourceError(ValueError):
    """The source as a whole cannot be read (a fatal error: nothing, or nothing more, is sent)."""


@dataclass(frozen=True)
class Record:
    """One item ready to upsert, or (`error` set, `item` None) a row or line that could not become one."""

    id: str
    item: search_pb2.Item | None = None
    error: str = ""


@dataclass(frozen=True)
class Source:
    """A readable source: `kind` (vectors, texts or images), its `total` items when known cheaply, the vectors'
    `dim` when the file says it, and `records()`, a fresh streaming iterator each call."""

    kind: str
    path: Path
    total: int | None
    dim: int | None
    records: Callable[[], Iterator[Record]]

    @property
    def default_batch_size(self) -> int:
        return DEFAULT_BATCH[self.kind]

    def first_vector_dim(self) -> int | None:
        """The dimension of the first item with a vector (reads only up to it), or None if there is none."""
        if self.dim is not None:
            return self.dim
        for record in self.records():
            if record.item is not None and (record.item.vector or record.item.vector_f32):
                return len(record.item.vector) or len(record.item.vector_f32) // 4
        return None

    def first_items(self, limit: int) -> list[search_pb2.Item]:
        """Up to `limit` of the first readable items (unreadable records are passed over), ending early at the first
        one with a vector: what the dimension of a new collection is learned from."""
        items: list[search_pb2.Item] = []
        for record in self.records():
            if record.item is None:
                continue
            items.append(record.item)
            if len(items) >= limit or record.item.vector or record.item.vector_f32:
                break
        return items


def compact_json(value: Any) -> bytes:
    """A payload as Item.payload stores it: compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- vectors --------------------------------------------------------------------------------------------------------

def open_matrix(path: Path) -> np.ndarray:
    """An n x d memory-mapped view of a .npy (any real dtype) or TEXMEX .fvecs file, rows still in file layout.

    For .fvecs the view is n x (d + 1) int32: column 0 holds each row's dimension, the rest the float32 bits.
    """
    try:
        if path.suffix == ".fvecs":
            return _open_fvecs(path)
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None
    if matrix.ndim != 2 or not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise SourceError(f"{path}: expected a 2-D numeric array, got {matrix.dtype} of shape {matrix.shape}")
    return matrix


def _open_fvecs(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size < 4:
        raise SourceError(f"{path} is empty")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if dim <= 0 or size % (4 * (dim + 1)):
        raise SourceError(f"{path} is not a {dim}-d .fvecs file ({size} bytes is not a whole number of rows)")
    return np.memmap(path, dtype="<i4", mode="r").reshape(-1, dim + 1)


def _chunk_vectors(path: Path, matrix: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows lo..hi as float32, and a mask of the rows that are bad (.fvecs rows of another dimension)."""
    chunk = matrix[lo:hi]
    if path.suffix != ".fvecs":
        return np.ascontiguousarray(chunk, dtype=np.float32), np.zeros(len(chunk), dtype=bool)
    bad = chunk[:, 0] != chunk.shape[1] - 1
    return np.ascontiguousarray(chunk[:, 1:]).view("<f4"), bad


def _read_ids(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield line.rstrip("\r\n")


def _count_lines(path: Path) -> int:
    """Lines in a file (a last line without a newline counts), by a chunked byte scan."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def vector_source(path: str | Path, ids: str | Path | None = None) -> Source:
    """A .npy or .fvecs file; ids are the row numbers as strings, or the lines of `ids` (one per row)."""
    path = Path(path)
    if path.suffix not in VECTOR_EXTENSIONS:
        raise SourceError(f"{path}: vectors must be a .npy or .fvecs file")
    matrix = open_matrix(path)
    n, dim = len(matrix), matrix.shape[1] - (path.suffix == ".fvecs")
    ids_path = Path(ids) if ids is not None else None
    if ids_path is not None:
        try:
            count = _count_lines(ids_path)
        except OSError as exc:
            raise SourceError(f"cannot read ids file {ids_path}: {exc.strerror}") from None
        if count != n:
            raise SourceError(f"{ids_path} has {count} ids for the {n} vectors in {path}")

    def records() -> Iterator[Record]:
        rows = open_matrix(path)  # a fresh map per pass, released when the pass ends
        names = _read_ids(ids_path) if ids_path is not None else map(str, range(n))
        for lo in range(0, n, CHUNK_ROWS):
            vectors, bad = _chunk_vectors(path, rows, lo, min(n, lo + CHUNK_ROWS))
            for row, vector in enumerate(vectors):
                item_id = next(names, None)
                if item_id is None:
                    raise SourceError(f"{ids_path} ran out of ids at row {lo + row}")
                if bad[row]:
                    yield Record(item_id, error=f"{path.name} row {lo + row}: its dimension is not {dim}")
                else:
                    yield Record(item_id, search_pb2.Item(id=item_id, vector_f32=codec.pack(vector)))

    return Source("vectors", path, n, dim, records)


# --- JSONL items ----------------------------------------------------------------------------------------------------

def parse_line(line: str, number: int) -> Record:
    """One JSONL line as a record: {"id", "text" or "vector", "payload"?}; a bad line names its line number."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return Record(f"line {number}", error=f"line {number}: not JSON ({exc.msg})")
    if not isinstance(obj, dict):
        return Record(f"line {number}", error=f"line {number}: expected a JSON object")
    item_id = obj.get("id")
    if not isinstance(item_id, str) or not item_id:
        return Record(f"line {number}", error=f"line {number}: 'id' must be a non-empty string")
    text, vector = obj.get("text"), obj.get("vector")
    if (text is None) == (vector is None):
        return Record(item_id, error=f"line {number}: set exactly one of 'text' and 'vector'")
    payload = compact_json(obj["payload"]) if obj.get("payload") is not None else b""
    if text is not None:
        if not isinstance(text, str):
            return Record(item_id, error=f"line {number}: 'text' must be a string")
        return Record(item_id, search_pb2.Item(id=item_id, text=text, payload=payload))
    if not isinstance(vector, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in vector):
        return Record(item_id, error=f"line {number}: 'vector' must be a list of numbers")
    return Record(item_id, search_pb2.Item(id=item_id, vector_f32=codec.pack(np.asarray(vector)), payload=payload))


def jsonl_source(path: str | Path) -> Source:
    """A JSONL file of items (blank lines are ignored); its lines are counted first only when it is under 1 GiB."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    total = _count_lines(path) if size <= COUNT_LINES_MAX_BYTES else None

    def records() -> Iterator[Record]:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield parse_line(line, number)

    return Source("texts", path, total, None, records)


# --- images ---------------------------------------------------------------------------------------------------------

def image_paths(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively, each directory's entries in sorted order (stable across runs)."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(root, name)


def image_source(folder: str | Path) -> Source:
    """Every image under `folder`: id = its path relative to the folder (posix), payload {"path": id}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a directory")
    total = sum(1 for _ in image_paths(folder))

    def records() -> Iterator[Record]:
        for path in image_paths(folder):
            item_id = path.relative_to(folder).as_posix()
            try:
                data = path.read_bytes()
            except OSError as exc:
                yield Record(item_id, error=f"cannot read {item_id}: {exc.strerror}")
                continue
            yield Record(item_id, search_pb2.Item(id=item_id, image=data, payload=compact_json({"path": item_id})))

    return Source("images", folder, total, None, records)


def open_source(path: str | Path, ids: str | Path | None = None) -> Source:
    """A source by what `path` is: a directory (images), .npy/.fvecs (vectors) or anything else (JSONL)."""
    path = Path(path)
    if path.is_dir():
        source = image_source(path)
    elif path.suffix in VECTOR_EXTENSIONS:
        return vector_source(path, ids)
    else:
        source = jsonl_source(path)
    if ids is not None:
        raise SourceError("an ids file goes only with a .npy or .fvecs vector file")
    return source
