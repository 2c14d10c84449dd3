"""Texts and images to vectors through the encoders (Triton), as a collection stores them: for upserts, searches by
text or image, combined searches' parts, and the Encode RPC."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from shardsearch import codec, validation
from shardsearch.coordinator.catalog import Catalog
from shardsearch.coordinator.router import remaining
from shardsearch.encoder_client import Encoders
from shardsearch.errors import FailedPrecondition, InvalidArgument
from shardsearch.offload import Offload
from shardsearch.v1 import search_pb2


class Embedding:
    def __init__(self, encoders: Encoders, catalog: Catalog, run: Offload, limits: validation.Limits) -> None:
        self.encoders = encoders
        self._catalog = catalog
        self._run = run
        self._limits = limits

    async def embed(
        self, spec: search_pb2.Collection | None, kind: str, values: Sequence[Any], field: str | Sequence[str],
        timeout: float,
    ) -> tuple[np.ndarray, list[bool]]:
        """Embeddings as `spec` stores them: its dimension checked, L2-normalised for METRIC_INNER_PRODUCT."""
        encoder = self.encoders.get(kind)
        if spec is not None and encoder.dim != spec.dim:
            raise FailedPrecondition(
                f"collection {spec.name!r} has dim {spec.dim}, but the {kind} model {encoder.info.label} makes "
                f"{encoder.dim}-d embeddings; create the collection with dim {encoder.dim} to use it"
            )
        encoded = await encoder.encode(values, field, timeout)
        vectors = encoded.vectors
        if spec is not None and spec.metric == search_pb2.METRIC_INNER_PRODUCT:
            vectors = await self._run(normalize_rows, vectors)
        return vectors, encoded.cached

    async def embed_items(
        self, spec: search_pb2.Collection, items: Sequence[search_pb2.Item], timeout: float
    ) -> dict[int, np.ndarray]:
        """Row -> embedding for the upserted items that carry a text or an image instead of a vector."""
        rows: dict[str, list[int]] = {"text": [], "image": []}
        for i, item in enumerate(items):
            if item.text or item.image:
                if item.vector or item.vector_f32 or (item.text and item.image):
                    raise InvalidArgument(f"items[{i}]: set one of vector, vector_f32, text or image")
                rows["text" if item.text else "image"].append(i)
        embedded: dict[int, np.ndarray] = {}
        deadline = time.monotonic() + timeout
        for kind, indices in rows.items():
            if indices:
                values = [getattr(items[i], kind) for i in indices]
                fields = [f"items[{i}].{kind}" for i in indices]
                vectors, _ = await self.embed(spec, kind, values, fields, remaining(deadline))
                embedded.update(zip(indices, vectors))
        return embedded

    async def encode(self, request: search_pb2.EncodeRequest, timeout: float) -> search_pb2.EncodeResponse:
        deadline = time.monotonic() + timeout
        count = len(request.texts) + len(request.images)
        if count == 0:
            raise InvalidArgument("texts, images: give at least one text or image")
        if count > self._limits.max_items:
            raise InvalidArgument(f"texts, images: {count} inputs; at most {self._limits.max_items} per call")
        spec = await self._catalog.get(request.collection, timeout) if request.collection else None
        response = search_pb2.EncodeResponse()
        for kind, values in (("text", list(request.texts)), ("image", list(request.images))):
            if not values:
                continue
            vectors, cached = await self.embed(spec, kind, values, f"{kind}s", remaining(deadline))
            response.embeddings.extend(
                search_pb2.Embedding(vector_f32=codec.pack(row), cached=hit) for row, hit in zip(vectors, cached)
            )
            setattr(response, f"{kind}_model", self.encoders.get(kind).info.label)
        return response


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copy (rows of norm 0 stay 0)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)

