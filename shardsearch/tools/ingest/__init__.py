"""Bulk ingestion (`shardsearch ingest`): loads vectors, JSONL items or an image folder through the coordinator.

Layers, each usable alone:
- `sources`: streaming readers (.npy, .fvecs, JSONL, image folders) yielding upsert-ready records;
- `writer`: one batch's resume check, retries and bisection, over two coroutines (pure, tested without a server);
- `summary`: counts and failures grouped by reason;
- `loader`: `await ingest(address, collection, source, **options) -> IngestSummary`;
- `cli`: `add_arguments` and `run`, registered in `shardsearch.tools.cli`.
"""

from __future__ import annotations

from shardsearch.tools.ingest.cli import add_arguments, run
from shardsearch.tools.ingest.loader import IngestError, IngestOptions, ingest
from shardsearch.tools.ingest.sources import (
    Record,
    Source,
    SourceError,
    image_source,
    jsonl_source,
    open_source,
    vector_source,
)
from shardsearch.tools.ingest.summary import IngestSummary

__all__ = [
    "IngestError", "IngestOptions", "IngestSummary", "Record", "Source", "SourceError", "add_arguments", "image_source",
    "ingest", "jsonl_source", "open_source", "run", "vector_source",
]
