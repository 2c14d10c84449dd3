"""`shardsearch export` and `shardsearch import`: a collection to a file and back, through the public API.

The file is JSON lines: a header with the collection's definition, then one item a line with its exact bits:

    {"format": "shardsearch-export", "version": 1, "collection": {"name": ..., "dim": ..., "metric": ..., ...}}
    {"id": "a", "vector": "<base64 of little-endian float32>", "payload": "<base64>", "fields": {"kind": "cat"}}

Export pages through ListIds (hash order, stable while the ring does not change) and fetches each page with Get,
so memory stays flat whatever the collection's size; `FILE.progress` records the page token and the byte offset
after every page, and `--resume` carries on from there (a listing token names the ring layout: if shards were added
or removed meanwhile the export must start again, and says so). Import creates the collection from the header
(unless it exists with the same dimension and metric) and upserts the items in batches, fields included, into any
number of shards.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from google.protobuf import json_format

from shardsearch import security
from shardsearch.client import VECTOR_STORES, AlreadyExists, Client, ClientError, FieldValue
from shardsearch.tools.exits import fail
from shardsearch.v1 import search_pb2

FORMAT, VERSION = "shardsearch-export", 1
PAGE = 1000


def _client(args: argparse.Namespace) -> Client:
    settings = security.ClientSecurity(**security.ClientSecurity.from_args(args)).client_kwargs()
    return Client(args.address or "127.0.0.1:50051", timeout=args.timeout, **settings)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="coordinator host:port (default 127.0.0.1:50051)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds (default 60)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    security.ClientSecurity.add_arguments(parser)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True)
    parser.add_argument("--out", required=True, type=Path, help="the JSON-lines file to write")
    parser.add_argument("--resume", action="store_true", help="carry on from OUT.progress (an interrupted export)")
    parser.add_argument("--page-size", type=int, default=PAGE, help=f"items per ListIds/Get call (default {PAGE})")
    _common(parser)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="source", required=True, type=Path, help="a file written by `shardsearch export`")
    parser.add_argument("--collection", help="import under this name (default: the exported collection's)")
    parser.add_argument("--batch-size", type=int, default=500, help="items per Upsert (default 500)")
    parser.add_argument("--vector-store", choices=tuple(VECTOR_STORES),
                        help="create the collection with this vector store (default: the exported collection's)")
    _common(parser)


def _bar(total: int | None, quiet: bool, what: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=" items", desc=what, disable=quiet, file=sys.stderr)


def _line(item_id: str, vector: np.ndarray, payload: bytes, fields: dict[str, FieldValue]) -> str:
    record: dict[str, Any] = {"id": item_id, "vector": base64.b64encode(vector.astype("<f4").tobytes()).decode()}
    if payload:
        record["payload"] = base64.b64encode(payload).decode()
    if fields:
        record["fields"] = fields
    return json.dumps(record, separators=(",", ":")) + "\n"


def export_collection(client: Client, collection: str, out: Path, *, resume: bool = False, page_size: int = PAGE,
                      quiet: bool = True) -> int:
    """Writes the collection to `out`; returns the items written (in all, with a resumed part)."""
    progress_path = out.with_name(out.name + ".progress")
    info = client.describe(collection)
    token, written = "", 0
    if resume and progress_path.exists():
        state = json.loads(progress_path.read_text())
        token, written = state["page_token"], state["items"]
        with open(out, "r+b") as fh:
            fh.truncate(state["bytes"])  # drop a page written after the last recorded one
        mode = "a"
    else:
        mode = "w"
    with open(out, mode, encoding="utf-8") as fh, _bar(info.total_vectors, quiet, f"export {collection}") as bar:
        bar.update(written)
        if mode == "w":
            header = {"format": FORMAT, "version": VERSION,
                      "collection": json_format.MessageToDict(info.collection, preserving_proto_field_name=True)}
            fh.write(json.dumps(header) + "\n")
        if resume and mode == "a" and not token:
            return written  # the recorded state says it had finished
        for ids, after in client.list_id_pages(collection, page_size=page_size, page_token=token):
            items = client.get(collection, ids) if ids else []
            fh.writelines(_line(i.id, i.vector, i.payload, i.fields) for i in items)
            fh.flush()
            written += len(items)
            bar.update(len(items))
            progress_path.write_text(json.dumps({"page_token": after, "bytes": fh.tell(), "items": written}))
    progress_path.unlink(missing_ok=True)
    return written


def read_export(path: Path) -> tuple[search_pb2.Collection, Iterator[dict[str, Any]]]:
    """The header's collection and an iterator over the item records (one line at a time)."""
    fh = open(path, encoding="utf-8")
    header = json.loads(fh.readline() or "{}")
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        fh.close()
        raise ValueError(f"{path} is not a file written by `shardsearch export` (format {FORMAT} {VERSION})")
    spec = json_format.ParseDict(header["collection"], search_pb2.Collection())

    def records() -> Iterator[dict[str, Any]]:
        with fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    return spec, records()


STORE_NAMES = {value: name for name, value in VECTOR_STORES.items()}


def import_collection(client: Client, path: Path, *, name: str | None = None, batch_size: int = 500,
                      quiet: bool = True, vector_store: str | None = None) -> int:
    """Creates the collection from the file's header (or checks the existing one) and upserts every item.
    `vector_store` replaces the exported collection's (the way to move a collection to another store)."""
    spec, records = read_export(path)
    name = name or spec.name
    metric = "ip" if spec.metric == search_pb2.METRIC_INNER_PRODUCT else "l2"
    index = {k: v for k, v in json_format.MessageToDict(spec.index, preserving_proto_field_name=True).items()
             if k != "vector_store"}
    store = vector_store or STORE_NAMES.get(spec.index.vector_store)
    try:
        client.create_collection(name, spec.dim, metric, vector_store=store, **index)
    except AlreadyExists:
        existing = client.describe(name).collection
        if (existing.dim, existing.metric) != (spec.dim, spec.metric):
            raise ValueError(f"collection {name!r} exists with dim {existing.dim} metric {existing.metric}; the "
                             f"file holds dim {spec.dim} metric {spec.metric}") from None
    done = 0
    with _bar(None, quiet, f"import {name}") as bar:
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                done += _upsert(client, name, spec.dim, batch)
                bar.update(len(batch))
                batch = []
        if batch:
            done += _upsert(client, name, spec.dim, batch)
            bar.update(len(batch))
    return done


def _upsert(client: Client, name: str, dim: int, batch: list[dict[str, Any]]) -> int:
    vectors = np.stack([np.frombuffer(base64.b64decode(r["vector"]), dtype="<f4") for r in batch]).reshape(-1, dim)
    return client.upsert(name, [r["id"] for r in batch], vectors,
                         payloads=[base64.b64decode(r.get("payload", "")) for r in batch],
                         fields=[r.get("fields", {}) for r in batch], batch_size=len(batch))


def run_export(args: argparse.Namespace) -> None:
    with _client(args) as client:
        try:
            n = export_collection(client, args.collection, args.out, resume=args.resume, page_size=args.page_size,
                                  quiet=args.quiet)
        except ClientError as exc:
            hint = " (start again without --resume)" if args.resume and "page_token" in exc.details else ""
            fail("export", f"{exc}{hint}")
    print(f"exported {n} items of {args.collection} to {args.out}")


def run_import(args: argparse.Namespace) -> None:
    with _client(args) as client:
        try:
            n = import_collection(client, args.source, name=args.collection, batch_size=args.batch_size,
                                  quiet=args.quiet, vector_store=args.vector_store)
        except (ClientError, ValueError, OSError) as exc:
            fail("import", exc)
    print(f"imported {n} items into {args.collection or 'the exported collection'}")
