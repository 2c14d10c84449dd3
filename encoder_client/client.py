"""An async Triton client that turns texts or images into embeddings: checked, cached, batched, retried.

One `Encoder` per model. `encode` validates every input first (INVALID_ARGUMENT naming the field), looks the
embeddings up in the cache, preprocesses the misses (in an executor), and queues them in a dynamic batcher that
gathers concurrent requests into infer calls of at most the model's max_batch_size. Infer calls carry a deadline (the
smaller of the caller's and `timeout_s`); UNAVAILABLE is retried with exponential backoff while the deadline allows;
Triton's errors come back as gRPC statuses with a message naming the model.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from prometheus_client import CollectorRegistry, Counter, Histogram
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from shardsearch import logs
from shardsearch.batching import Batcher, BatchingConfig, BatchMetrics
from shardsearch.encoder_client.cache import EmbeddingCache, content_key
from shardsearch.encoder_client.model import ModelInfo, ModelRef, describe
from shardsearch.encoder_client.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    InputLimits,
    PixelSpec,
    check_image,
    check_image_size,
    normalize_text,
    preprocess_image,
)
from shardsearch.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ShardSearchError,
    Unavailable,
)
from shardsearch.metrics import LATENCY_BUCKETS
from shardsearch.offload import Offload

logger = logging.getLogger(__name__)

KINDS = ("text", "image")


@dataclass(frozen=True)
class EncoderOptions:
    timeout_s: float = 10.0
    """Longest one infer call may take (the caller's deadline also applies)."""
    retries: int = 3
    """Retries of an infer call that failed with UNAVAILABLE."""
    backoff_s: float = 0.05
    """First retry delay; doubled each time, with jitter."""
    batch_max_size: int = 0
    """Items per infer call; 0 = the model's max_batch_size."""
    batch_max_queue_delay_us: int = 2000
    batch_max_in_flight: int = 4
    batch_max_queue_size: int = 4096
    image_preprocess: str = "auto"
    """auto, client or server."""
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    limits: InputLimits = field(default_factory=InputLimits)


class EncoderNotReady(RuntimeError):
    """The model was not ready on the server within the start-up wait."""


class EncoderMetrics:
    """Labels are bounded: `model` is one of the configured models, `code` a gRPC status name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.infers = Counter(
            "shardsearch_encoder_infer_requests", "Infer calls to Triton, by model and resulting gRPC status code.",
            ["model", "code"], registry=registry,
        )
        self.infer_latency = Histogram(
            "shardsearch_encoder_infer_duration_seconds", "Time of one infer call to Triton (retries counted apart).",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.retries = Counter(
            "shardsearch_encoder_infer_retries", "Infer calls retried after UNAVAILABLE.", ["model"], registry=registry,
        )
        self.items = Counter(
            "shardsearch_encoder_items", "Texts and images embedded, by model and source (model or cache).",
            ["model", "source"], registry=registry,
        )


@dataclass
class Encoded:
    vectors: np.ndarray
    """(n, dim) float32, as the model returned them."""
    cached: list[bool]


def map_error(exc: InferenceServerException, label: str) -> ShardSearchError:
    """A Triton failure as the status our caller should see, with a message naming the model."""
    status = (exc.status() or "").rsplit(".", 1)[-1]
    message = exc.message() or status or "no message"
    if status == "UNAVAILABLE":
        return Unavailable(f"encoder model {label} is unavailable: {message}; retry with backoff")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"encoder model {label} did not answer in time: {message}")
    if status == "INVALID_ARGUMENT":
        return InvalidArgument(f"encoder model {label} rejected the input: {message}")
    if status == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(f"encoder model {label} is overloaded: {message}; retry with backoff")
    if status == "NOT_FOUND":
        return Unavailable(f"encoder model {label} is not loaded on the Triton server: {message}")
    return ShardSearchError(f"encoder model {label} failed: {message}", grpc.StatusCode.INTERNAL)


class Encoder:
    """Embeds one kind of input ("text" or "image") with one Triton model."""

    def __init__(
        self, client: triton_aio.InferenceServerClient, info: ModelInfo, kind: str, options: EncoderOptions,
        metrics: EncoderMetrics, batch_metrics: BatchMetrics, cache: EmbeddingCache | None, executor: Executor,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.info = info
        self.kind = kind
        self._client = client
        self._options = options
        self._metrics = metrics
        self._cache = cache
        self._run = Offload(executor)
        self.server_side = kind == "image" and info.takes_bytes
        if kind == "image":
            mode = options.image_preprocess
            if mode == "client" and info.takes_bytes:
                raise FailedPrecondition(f"image_preprocess=client, but model {info.label} takes encoded bytes")
            if mode == "server" and not info.takes_bytes:
                raise FailedPrecondition(f"image_preprocess=server, but model {info.label} takes a pixel tensor")
            if mode not in ("auto", "client", "server"):
                raise ValueError(f"image_preprocess must be auto, client or server, not {mode!r}")
        self._pixels = (
            PixelSpec.for_model(info, options.image_mean, options.image_std)
            if kind == "image" and not info.takes_bytes else None
        )
        limit = info.max_batch_size or 1
        max_batch = min(options.batch_max_size or limit, limit)
        self._chunk = max_batch
        self._batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            f"encoder {info.label}",
            BatchingConfig(
                max_batch_size=max_batch, max_queue_delay_us=options.batch_max_queue_delay_us,
                max_queue_size=options.batch_max_queue_size, max_in_flight=options.batch_max_in_flight,
            ),
            self._run_batch, batch_metrics,
        )
        for code in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT", "INTERNAL"):
            metrics.infers.labels(info.label, code)
        metrics.retries.labels(info.label)
        for source in ("model", "cache"):
            metrics.items.labels(info.label, source)

    @property
    def dim(self) -> int:
        return self.info.dim

    def describe(self) -> str:
        how = ""
        if self.kind == "image":
            how = ", preprocessing in the model" if self.server_side else f", preprocessing here to {self._pixels}"
        return f"{self.kind} model {self.info.label} ({self.info.dim}-d, max batch {self.info.max_batch_size}{how})"

    async def encode(
        self, values: Sequence[str] | Sequence[bytes], field: str | Sequence[str], timeout: float
    ) -> Encoded:
        """Embeddings of `values` (texts or encoded images), in order. `field` names them in error messages: one
        name per value, or a prefix that gets `[i]`."""
        n = len(values)
        if n == 0:
            return Encoded(np.empty((0, self.dim), np.float32), [])
        fields = [f"{field}[{i}]" for i in range(n)] if isinstance(field, str) else list(field)
        contents = await self._contents(values, fields)
        keys = [content_key(self.info.label, self.kind, c) for c in contents] if self._cache else []
        unique = list(dict.fromkeys(keys)) if self._cache else []
        found = dict(zip(unique, await self._cache.get_many(unique))) if self._cache else {}
        vectors = np.empty((n, self.dim), np.float32)
        cached = [False] * n
        todo: dict[str, list[int]] = {}  # one model input per distinct content
        for i in range(n):
            hit = found.get(keys[i]) if keys else None
            if hit is not None and len(hit) == 4 * self.dim:
                vectors[i] = np.frombuffer(hit, np.float32)
                cached[i] = True
            else:
                todo.setdefault(keys[i] if keys else str(i), []).append(i)
        if todo:
            first = [rows[0] for rows in todo.values()]
            inputs = await self._model_inputs([contents[i] for i in first], [fields[i] for i in first])
            outputs = await self._batcher.submit(self.info.name, inputs, len(first), timeout)
            for rows, embedding in zip(todo.values(), outputs, strict=True):
                vectors[rows] = embedding
            if self._cache:
                self._cache.put_many([(key, outputs[j].tobytes()) for j, key in enumerate(todo)])
        hits = sum(cached)
        self._metrics.items.labels(self.info.label, "cache").inc(hits)
        self._metrics.items.labels(self.info.label, "model").inc(n - hits)
        return Encoded(vectors, cached)

    async def _contents(self, values: Sequence[str] | Sequence[bytes], fields: list[str]) -> list[bytes]:
        """Checks every input (sizes, text normalisation) and returns the bytes that key the cache."""
        limits = self._options.limits
        if self.kind == "text":
            def texts() -> list[bytes]:
                out = []
                for value, name in zip(values, fields):
                    if not isinstance(value, str):
                        raise InvalidArgument(f"{name}: expected a text")
                    out.append(normalize_text(value, name, limits).encode("utf-8"))
                return out
            return texts() if len(values) <= 16 else await self._run(texts)
        for value, name in zip(values, fields):
            if not isinstance(value, bytes):
                raise InvalidArgument(f"{name}: expected image bytes")
            check_image_size(value, name, limits)
        return list(values)  # type: ignore[arg-type]

    async def _model_inputs(self, contents: list[bytes], fields: list[str]) -> np.ndarray:
        """One row per content, in the model's input form (decoding and preprocessing images in the executor)."""
        if self.kind == "text":
            return np.array([[c] for c in contents], dtype=np.object_)
        limits = self._options.limits
        if self.server_side:
            def checked() -> np.ndarray:
                for content, name in zip(contents, fields):
                    check_image(content, name, limits)
                return np.array([[c] for c in contents], dtype=np.object_)
            return await self._run(checked)
        spec = self._pixels
        assert spec is not None
        return await self._run(
            lambda: np.stack([preprocess_image(c, name, spec, limits) for c, name in zip(contents, fields)])
        )

    async def _run_batch(self, key: Hashable, items: list[np.ndarray], timeout: float) -> list[np.ndarray]:
        rows = items[0] if len(items) == 1 else await self._run(np.concatenate, items)
        embeddings = await self._infer(rows, timeout)
        out, start = [], 0
        for item in items:
            out.append(embeddings[start : start + len(item)])
            start += len(item)
        return out

    async def _infer(self, rows: np.ndarray, timeout: float) -> np.ndarray:
        """Infer calls of at most the model's batch size, concurrently; (len(rows), dim) float32."""
        chunks = [rows[i : i + self._chunk] for i in range(0, len(rows), self._chunk)]
        deadline = time.monotonic() + timeout
        parts = await asyncio.gather(*(self._infer_with_retries(chunk, deadline) for chunk in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _infer_with_retries(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        label = self.info.label
        attempt = 0
        while True:
            remaining = min(deadline - time.monotonic(), self._options.timeout_s)
            if remaining <= 0:
                self._metrics.infers.labels(label, "DEADLINE_EXCEEDED").inc()
                raise DeadlineExceeded(f"encoder model {label}: the deadline passed before Triton answered")
            started = time.monotonic()
            try:
                result = await self._infer_once(rows, remaining)
            except InferenceServerException as exc:
                error = map_error(exc, label)
                self._metrics.infers.labels(label, error.code.name).inc()
                backoff = self._options.backoff_s * 2**attempt * (0.5 + random.random())
                if (error.code == grpc.StatusCode.UNAVAILABLE and attempt < self._options.retries
                        and time.monotonic() + backoff < deadline):
                    attempt += 1
                    self._metrics.retries.labels(label).inc()
                    logger.info("encoder model %s unavailable, retry %d in %.0f ms: %s",
                                label, attempt, backoff * 1000, exc.message())
                    await asyncio.sleep(backoff)
                    continue
                raise error from None
            finally:
                self._metrics.infer_latency.labels(label).observe(time.monotonic() - started)
            self._metrics.infers.labels(label, "OK").inc()
            return result

    async def _infer_once(self, rows: np.ndarray, timeout: float) -> np.ndarray:
        batched = self.info.max_batch_size > 0
        if not batched:  # a model without a batch dimension takes one item per call
            parts = [await self._infer_once_unbatched(row, timeout) for row in rows]
            return np.stack(parts)
        data = rows if rows.dtype == np.object_ else rows.astype(self._pixels.dtype, copy=False)  # type: ignore[union-attr]
        request = InferInput(self.info.input_name, list(data.shape), self.info.input_datatype)
        request.set_data_from_numpy(data)
        result = await self._client.infer(
            self.info.name, [request], model_version=self.info.version,
            outputs=[InferRequestedOutput(self.info.output_name)], client_timeout=timeout,
            request_id=logs.current_request_id()[:128],
        )
        return self._embeddings(result.as_numpy(self.info.output_name), len(rows))

    async def _infer_once_unbatched(self, row: np.ndarray, timeout: float) -> np.ndarray:
        request = InferInput(self.info.input_name, list(row.shape), self.info.input_datatype)
        request.set_data_from_numpy(row)
        result = await self._client.infer(
            self.info.name, [request], model_version=self.info.version,
            outputs=[InferRequestedOutput(self.info.output_name)], client_timeout=timeout,
        )
        return self._embeddings(result.as_numpy(self.info.output_name), 1)[0]

    def _embeddings(self, output: np.ndarray | None, n: int) -> np.ndarray:
        if output is None or output.reshape(n, -1).shape[1] != self.dim:
            shape = None if output is None else list(output.shape)
            raise ShardSearchError(
                f"encoder model {self.info.label} returned output {self.info.output_name!r} of shape {shape}, "
                f"expected [{n}, {self.dim}]", grpc.StatusCode.INTERNAL,
            )
        vectors = output.reshape(n, self.dim).astype(np.float32, copy=False)
        if not np.isfinite(vectors).all():
            raise ShardSearchError(f"encoder model {self.info.label} returned NaN or infinite values",
                                   grpc.StatusCode.INTERNAL)
        return vectors

    async def close(self) -> None:
        await self._batcher.close()


async def wait_until_ready(
    client: triton_aio.InferenceServerClient, url: str, ref: ModelRef, wait_s: float
) -> None:
    """Polls until the model is ready, or raises EncoderNotReady naming the model, the server and the last reason."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            if await client.is_model_ready(ref.name, ref.version):
                return
            reason = "the server does not have it ready (unknown to it, loading, or failed to load)"
        except InferenceServerException as exc:
            reason = exc.message() or str(exc.status())
        except Exception as exc:  # connection refused, DNS, TLS...
            reason = repr(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EncoderNotReady(f"Triton at {url}: model {ref} is not ready after {wait_s:g} s: {reason}")
        if not waited:
            logger.info("waiting up to %g s for model %s on Triton at %s: %s", wait_s, ref, url, reason)
            waited = True
        await asyncio.sleep(min(1.0, remaining))


async def connect(
    url: str, ref: ModelRef, kind: str, options: EncoderOptions, metrics: EncoderMetrics, batch_metrics: BatchMetrics,
    cache: EmbeddingCache | None, executor: Executor, wait_s: float = 0.0,
    client: triton_aio.InferenceServerClient | None = None,
) -> Encoder:
    """Waits for the model, reads what it takes and returns, and builds its Encoder."""
    client = client or triton_aio.InferenceServerClient(url)
    await wait_until_ready(client, url, ref, wait_s)
    try:
        metadata = await client.get_model_metadata(ref.name, ref.version, as_json=True)
        config = await client.get_model_config(ref.name, ref.version, as_json=True)
    except InferenceServerException as exc:
        raise EncoderNotReady(f"Triton at {url}: cannot read model {ref}'s metadata: {exc.message()}") from None
    info = describe(ref, metadata, config, kind)
    return Encoder(client, info, kind, options, metrics, batch_metrics, cache, executor)

