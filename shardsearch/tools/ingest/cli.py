"""`shardsearch ingest`: the command over `ingest`; exit 0 when every item landed (or was already there), 1 when some
items failed, 2 on a fatal error (source unreadable, coordinator unreachable, collection missing, no encoder to learn
--create's dimension from), 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from shardsearch import security
from shardsearch.tools.exits import fail
from shardsearch.tools.ingest.loader import METRICS, VECTOR_STORES, IngestError, ingest
from shardsearch.tools.ingest.sources import Source, SourceError, image_source, jsonl_source, vector_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--address", default="127.0.0.1:50051", help="coordinator host:port (default 127.0.0.1:50051)")
    arg("--collection", required=True, help="collection to load into")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", help=".npy (n x d, float) or .fvecs file; ids are the row numbers unless --ids")
    source.add_argument("--texts", help='JSONL: {"id", "text" (embedded by the coordinator) or "vector", "payload"?}')
    source.add_argument("--images", help="folder of images (recursive); id = path relative to it")
    arg("--ids", help="with --vectors: a file of ids, one a line, one per row")
    arg("--batch-size", type=int, default=0, help="items per Upsert (default 256 for vectors, 32 for texts/images)")
    arg("--concurrency", type=int, default=4, help="Upserts in flight at once (default 4)")
    arg("--timeout", type=float, default=60.0, help="deadline of each call in seconds (default 60)")
    arg("--retries", type=int, default=5,
        help="retries of a call failing with UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED (default 5)")
    arg("--create", action="store_true", help="create the collection if it does not exist")
    arg("--dim", type=int, default=0, help="with --create: dimension (default: the vector file's; for texts and "
                                            "images, learned from the coordinator's encoder by encoding the first)")
    arg("--metric", choices=tuple(METRICS), default="l2",
        help="with --create: l2 (default) or ip (inner product, usual for text and image embeddings)")
    arg("--vector-store", choices=tuple(VECTOR_STORES), default="float32",
        help="with --create: how shards keep the vectors (default float32; sq8 is a quarter of the memory, "
             "docs/OPERATIONS.md \"Capacity\")")
    arg("--overwrite", action="store_true", help="upsert every item (default: skip ids already stored, i.e. resume)")
    arg("--no-progress", action="store_true", help="no progress bar (it is shown only when stderr is a terminal)")
    arg("--json", help="also write the summary as JSON to this file ('-': stdout; the text summary goes to stderr)")
    security.ClientSecurity.add_arguments(parser)


def source_from_args(args: argparse.Namespace) -> Source:
    if args.ids and not args.vectors:
        raise SourceError("--ids goes only with --vectors")
    if args.vectors:
        return vector_source(args.vectors, args.ids)
    return jsonl_source(args.texts) if args.texts else image_source(args.images)


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        summary = asyncio.run(ingest(
            args.address, args.collection, source_from_args(args), batch_size=args.batch_size,
            concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, overwrite=args.overwrite,
            create=args.create, dim=args.dim, metric=args.metric, vector_store=args.vector_store, progress=False if args.no_progress else None,
            **security.ClientSecurity.from_args(args),
        ))
    except KeyboardInterrupt:
        print("shardsearch ingest: interrupted; run the same command again to resume (stored ids are skipped)",
              file=sys.stderr)
        sys.exit(130)
    except (IngestError, ValueError, OSError) as exc:  # SourceError and SecurityConfigError are ValueErrors
        fail("ingest", str(exc))
    print(summary.text(), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    if args.json:
        document = json.dumps(summary.to_json(), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(document)
        else:
            with open(args.json, "w", encoding="utf-8") as out:
                out.write(document)
    if summary.exit_code:
        sys.exit(summary.exit_code)
