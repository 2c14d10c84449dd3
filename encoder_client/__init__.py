"""Texts and images to vectors through a Triton Inference Server (tritonclient.grpc.aio).

`Encoders.start(...)` connects the configured text and image models; `Encoders.get("text")` is the `Encoder` for a
kind, or FAILED_PRECONDITION telling the caller how to configure one.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

import tritonclient.grpc.aio as triton_aio
from prometheus_client import CollectorRegistry

from shardsearch.batching import BatchMetrics
from shardsearch.encoder_client.cache import EmbeddingCache, EmbeddingCacheMetrics
from shardsearch.encoder_client.client import Encoded, Encoder, EncoderMetrics, EncoderNotReady, EncoderOptions, connect
from shardsearch.encoder_client.model import ModelInfo, ModelRef
from shardsearch.encoder_client.preprocess import InputLimits
from shardsearch.errors import FailedPrecondition, Unavailable

__all__ = [
    "Encoded", "Encoder", "EncoderMetrics", "EncoderNotReady", "EncoderOptions", "Encoders", "InputLimits",
    "ModelInfo", "ModelRef", "EmbeddingCache", "EmbeddingCacheMetrics",
]

logger = logging.getLogger(__name__)

RETRY_S = 2.0  # how often a model that was not ready at start-up is checked again

HOW_TO = {
    "text": "start the coordinator with --encoder-url HOST:PORT (a Triton gRPC endpoint) and --text-model NAME "
            "(or SHARDSEARCH_COORDINATOR_ENCODER_URL and SHARDSEARCH_COORDINATOR_TEXT_MODEL)",
    "image": "start the coordinator with --encoder-url HOST:PORT (a Triton gRPC endpoint) and --image-model NAME "
             "(or SHARDSEARCH_COORDINATOR_ENCODER_URL and SHARDSEARCH_COORDINATOR_IMAGE_MODEL)",
}


class Encoders:
    """The coordinator's encoders, by kind, and the embedding cache they share."""

    def __init__(
        self, encoders: dict[str, Encoder], cache: EmbeddingCache | None,
        client: triton_aio.InferenceServerClient | None,
    ) -> None:
        self._encoders = encoders
        self.cache = cache
        self._client = client
        self._pending: dict[str, str] = {}  # kind -> why it is not connected yet
        self._tasks: list[asyncio.Task[None]] = []
        self._batch_metrics: dict[str, BatchMetrics] = {}

    @classmethod
    async def start(
        cls, url: str, models: dict[str, str], options: EncoderOptions, registry: CollectorRegistry,
        cache: EmbeddingCache | None, executor: Executor, wait_s: float, required: bool = False,
    ) -> "Encoders":
        """models: kind -> "name[:version]" (empty = not configured).

        Waits up to `wait_s` for each model. A model still not ready then raises EncoderNotReady if `required`;
        otherwise it is logged as an error naming the model, its calls answer UNAVAILABLE saying so, and it is
        connected in the background once ready (vector search never waits for the encoder). A model whose inputs
        or outputs do not fit raises FailedPrecondition: that is a configuration error.
        """
        wanted = {kind: ModelRef.parse(text) for kind, text in models.items() if text}
        if wanted and not url:
            raise ValueError(f"{', '.join(f'{k}_model' for k in wanted)} set without encoder_url (Triton host:port)")
        if not wanted:
            return cls({}, cache, None)
        client = triton_aio.InferenceServerClient(url)
        metrics = EncoderMetrics(registry)
        encoders = cls({}, cache, client)

        async def connect_kind(kind: str, ref: ModelRef, wait: float) -> Encoder:
            batch_metrics = encoders._batch_metrics.get(kind)
            if batch_metrics is None:
                batch_metrics = encoders._batch_metrics[kind] = BatchMetrics(registry, f"shardsearch_encoder_{kind}")
            return await connect(url, ref, kind, options, metrics, batch_metrics, cache, executor, wait, client=client)

        results = await asyncio.gather(
            *(connect_kind(kind, ref, wait_s) for kind, ref in wanted.items()), return_exceptions=True
        )
        try:
            for (kind, ref), result in zip(wanted.items(), results):
                if isinstance(result, Encoder):
                    encoders._add(kind, result, url)
                elif isinstance(result, EncoderNotReady) and not required:
                    logger.error("%s; %s calls answer UNAVAILABLE until it is ready (retrying in the background)",
                                 result, kind)
                    encoders._pending[kind] = f"the {kind} model {ref} is not ready on Triton at {url} yet"
                    encoders._tasks.append(asyncio.create_task(encoders._keep_connecting(kind, ref, connect_kind)))
                else:
                    raise result
        except BaseException:
            await encoders.close()
            raise
        return encoders

    def _add(self, kind: str, encoder: Encoder, url: str) -> None:
        self._encoders[kind] = encoder
        self._pending.pop(kind, None)
        logger.info("encoder: %s on Triton at %s", encoder.describe(), url)

    async def _keep_connecting(self, kind: str, ref: ModelRef, connect_kind) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(RETRY_S)
            try:
                encoder = await connect_kind(kind, ref, 0.0)
            except EncoderNotReady as exc:
                self._pending[kind] = str(exc)
                continue
            except FailedPrecondition as exc:
                logger.error("cannot use the %s model: %s", kind, exc)
                self._pending[kind] = str(exc)
                return
            self._add(kind, encoder, "the server")
            return

    def get(self, kind: str) -> Encoder:
        encoder = self._encoders.get(kind)
        if encoder is not None:
            return encoder
        if kind in self._pending:
            raise Unavailable(f"{self._pending[kind]}; retry later")
        raise FailedPrecondition(f"no {kind} model is configured on this coordinator: {HOW_TO[kind]}")

    def labels(self) -> dict[str, str]:
        return {kind: encoder.info.label for kind, encoder in self._encoders.items()}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for encoder in self._encoders.values():
            await encoder.close()
        if self.cache is not None:
            await self.cache.close()
        if self._client is not None:
            await self._client.close()
