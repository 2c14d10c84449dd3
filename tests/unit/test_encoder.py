"""encoder_client pieces that need no server: model description, preprocessing, the LRU, error mapping, retries.

The client against a real Triton server is tested in tests/integration/test_encoder.py."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from shardsearch.batching import BatchMetrics
from shardsearch.encoder_client.cache import EmbeddingCacheMetrics, LocalEmbeddingCache, content_key
from shardsearch.encoder_client.client import Encoder, EncoderMetrics, EncoderOptions, map_error
from shardsearch.encoder_client.model import ModelInfo, ModelRef, describe
from shardsearch.encoder_client.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    InputLimits,
    PixelSpec,
    normalize_text,
    open_image,
    preprocess_image,
)
from shardsearch.errors import FailedPrecondition, InvalidArgument, ShardSearchError


def meta(inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
         versions: tuple[str, ...] = ("1", "3")) -> dict[str, Any]:
    def tensors(specs: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
        return [{"name": n, "datatype": t, "shape": [str(d) for d in s]} for n, t, s in specs]
    return {"name": "m", "versions": list(versions), "inputs": tensors(inputs), "outputs": tensors(outputs)}


BATCHED = {"config": {"max_batch_size": 32, "dynamic_batching": {}}}


def test_model_ref_parse() -> None:
    assert ModelRef.parse("clip_text") == ModelRef("clip_text", "")
    assert ModelRef.parse("clip_text:2") == ModelRef("clip_text", "2")
    assert str(ModelRef.parse("a:7")) == "a:7"
    for bad in ("", ":1", "a:b"):
        with pytest.raises(ValueError):
            ModelRef.parse(bad)


def test_describe_reads_names_shapes_and_the_newest_version() -> None:
    info = describe(ModelRef("m"), meta([("text", "BYTES", [-1, 1])], [("text_embeds", "FP32", [-1, 384])]),
                    BATCHED, "text")
    assert (info.input_name, info.output_name, info.dim, info.version) == ("text", "text_embeds", 384, "3")
    assert info.max_batch_size == 32 and info.dynamic_batching and info.label == "m:3"
    image = describe(ModelRef("m", "1"), meta([("pixel_values", "FP32", [-1, 3, 224, 224])],
                     [("last_hidden", "FP32", [-1, 50, 768]), ("pooled", "FP32", [-1, 768]),
                      ("image_embeds", "FP32", [-1, 512])]), BATCHED, "image")
    assert image.output_name == "image_embeds" and image.dim == 512 and image.version == "1"
    assert image.pixel_layout == ("CHW", 224, 224) and not image.takes_bytes
    hwc = describe(ModelRef("m"), meta([("img", "UINT8", [160, 128, 3])], [("e", "FP16", [64])]),
                   {"config": {"max_batch_size": 0}}, "image")
    assert hwc.pixel_layout == ("HWC", 160, 128) and hwc.max_batch_size == 0 and hwc.dim == 64
    raw = describe(ModelRef("m"), meta([("image", "BYTES", [-1, 1])], [("e", "FP32", [-1, 8])]), BATCHED, "image")
    assert raw.takes_bytes


@pytest.mark.parametrize("inputs,outputs,kind,message", [
    ([("ids", "INT64", [-1, 77])], [("e", "FP32", [-1, 8])], "text", "BYTES input"),
    ([("a", "BYTES", [-1, 1]), ("b", "BYTES", [-1, 1])], [("e", "FP32", [-1, 8])], "text", "exactly one input"),
    ([("t", "BYTES", [-1, 1])], [("ids", "INT64", [-1, 8])], "text", "no floating-point output"),
    ([("p", "FP32", [-1, 1, 224, 224])], [("e", "FP32", [-1, 8])], "image", "neither [3,H,W] nor [H,W,3]"),
    ([("p", "INT64", [-1, 3, 224, 224])], [("e", "FP32", [-1, 8])], "image", "an image model takes"),
])
def test_describe_refuses_models_that_do_not_fit(inputs: Any, outputs: Any, kind: str, message: str) -> None:
    with pytest.raises(FailedPrecondition, match="model m:3") as info:
        describe(ModelRef("m"), meta(inputs, outputs), BATCHED, kind)
    assert message in str(info.value)


def test_describe_refuses_a_version_the_server_lacks() -> None:
    with pytest.raises(FailedPrecondition, match=r"versions \['1', '3'\], not 2"):
        describe(ModelRef("m", "2"), meta([("t", "BYTES", [-1, 1])], [("e", "FP32", [-1, 8])]), BATCHED, "text")


def encode_png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def test_preprocess_resizes_the_short_side_crops_the_centre_and_normalises() -> None:
    # 400x200: left half red, right half blue. Resized to 448x224, the centre 224x224 crop is half red, half blue.
    pixels = np.zeros((200, 400, 3), np.uint8)
    pixels[:, :200] = (255, 0, 0)
    pixels[:, 200:] = (0, 0, 255)
    spec = PixelSpec("CHW", 224, 224, "float32")
    out = preprocess_image(encode_png(pixels), "image", spec, InputLimits())
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    red = (np.array([1, 0, 0], np.float32) - CLIP_MEAN) / CLIP_STD
    blue = (np.array([0, 0, 1], np.float32) - CLIP_MEAN) / CLIP_STD
    assert np.allclose(out[:, 100, 10], red, atol=1e-5)
    assert np.allclose(out[:, 100, 213], blue, atol=1e-5)
    assert np.isclose(np.mean(out[0] > 0), 0.5, atol=0.02)  # the crop is centred
    hwc = preprocess_image(encode_png(pixels), "image", PixelSpec("HWC", 64, 32, "uint8"), InputLimits())
    assert hwc.shape == (64, 32, 3) and hwc.dtype == np.uint8
    assert hwc[32, 0].tolist() == [255, 0, 0] and hwc[32, 31].tolist() == [0, 0, 255]  # raw values, not normalised


def test_preprocess_handles_grey_alpha_and_palette_images() -> None:
    spec = PixelSpec("CHW", 32, 32, "float32")
    for mode in ("L", "RGBA", "P", "CMYK"):
        img = Image.new(mode, (40, 50))
        out = io.BytesIO()
        img.save(out, "PNG" if mode != "CMYK" else "JPEG")
        assert preprocess_image(out.getvalue(), "image", spec, InputLimits()).shape == (3, 32, 32)


def test_image_checks() -> None:
    limits = InputLimits(max_image_bytes=50_000, min_image_side=16, max_image_pixels=100 * 100)
    good = encode_png(np.full((60, 80, 3), 128, np.uint8))
    assert open_image(good, "f", limits).size == (80, 60)
    cases = {
        b"": "the image is empty",
        b"\x89PNG\r\n\x1a\n garbage": "image",
        good[: len(good) // 2]: "f:",
        encode_png(np.zeros((10, 80, 3), np.uint8)): "each side must be at least 16",
        encode_png(np.zeros((101, 101, 3), np.uint8)): "at most 10000 are allowed",
        bytes(60_000): "at most 50000 are allowed",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidArgument, match="^f: ") as info:
            open_image(data, "f", limits)
        assert message in str(info.value)


def test_normalize_text() -> None:
    limits = InputLimits(max_text_bytes=10)
    assert normalize_text("  caf\u0065\u0301 \n  au\tlait ", "t", InputLimits()) == "caf\u00e9 au lait"
    with pytest.raises(InvalidArgument, match="t: the text is empty"):
        normalize_text(" \t\n", "t", limits)
    with pytest.raises(InvalidArgument, match="11 bytes"):
        normalize_text("\u00e9" * 5 + "x", "t", limits)


async def test_local_cache_evicts_least_recently_used() -> None:
    cache = LocalEmbeddingCache(EmbeddingCacheMetrics(CollectorRegistry()), max_bytes=3 * (4 + 16))
    cache.put_many([(f"k{i}", bytes(16)) for i in range(3)])
    assert await cache.get_many(["k0"]) == [bytes(16)]  # k0 is now the most recent
    cache.put_many([("k3", bytes(16))])
    assert await cache.get_many(["k0", "k1", "k2", "k3"]) == [bytes(16), None, bytes(16), bytes(16)]
    assert content_key("m:1", "text", b"a") != content_key("m:2", "text", b"a")
    assert content_key("m:1", "text", b"a") != content_key("m:1", "image", b"a")


@pytest.mark.parametrize("status,code", [
    ("StatusCode.UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
    ("StatusCode.DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED),
    ("StatusCode.INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
    ("StatusCode.RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("StatusCode.NOT_FOUND", grpc.StatusCode.UNAVAILABLE),
    ("StatusCode.INTERNAL", grpc.StatusCode.INTERNAL),
    (None, grpc.StatusCode.INTERNAL),
])
def test_triton_errors_map_to_statuses_naming_the_model(status: str | None, code: grpc.StatusCode) -> None:
    error = map_error(InferenceServerException("boom", status=status), "clip_text:1")
    assert isinstance(error, ShardSearchError) and error.code == code
    assert "clip_text:1" in str(error) and "boom" in str(error)


class FlakyTriton:
    """Speaks tritonclient's aio infer interface: fails with the given statuses first, then answers."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        self.calls: list[int] = []

    async def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> Any:
        n = inputs[0].shape()[0]
        self.calls.append(n)
        if self.failures:
            raise InferenceServerException("try later", status=self.failures.pop(0))

        class Result:
            def as_numpy(self, name: str) -> np.ndarray:
                return np.arange(n * 4, dtype=np.float32).reshape(n, 4)

        return Result()


def text_encoder(client: Any, executor: ThreadPoolExecutor, retries: int = 3, max_batch: int = 4) -> Encoder:
    info = ModelInfo("m", "1", "text", "BYTES", (1,), "e", 4, max_batch, True)
    registry = CollectorRegistry()
    return Encoder(client, info, "text", EncoderOptions(retries=retries, backoff_s=0.001), EncoderMetrics(registry),
                   BatchMetrics(registry, "t"), None, executor)


async def test_unavailable_is_retried_then_succeeds() -> None:
    client = FlakyTriton(["StatusCode.UNAVAILABLE", "StatusCode.UNAVAILABLE"])
    with ThreadPoolExecutor(1) as executor:
        encoder = text_encoder(client, executor)
        out = await encoder.encode(["a", "b"], "texts", timeout=5)
        await encoder.close()
    assert out.vectors.shape == (2, 4) and len(client.calls) == 3


async def test_unavailable_past_the_retries_and_other_errors_are_not_retried() -> None:
    with ThreadPoolExecutor(1) as executor:
        client = FlakyTriton(["StatusCode.UNAVAILABLE"] * 5)
        encoder = text_encoder(client, executor, retries=2)
        with pytest.raises(ShardSearchError) as info:
            await encoder.encode(["a"], "texts", timeout=5)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(client.calls) == 3
        client = FlakyTriton(["StatusCode.INVALID_ARGUMENT"])
        encoder = text_encoder(client, executor)
        with pytest.raises(InvalidArgument, match="m:1 rejected the input"):
            await encoder.encode(["a"], "texts", timeout=5)
        assert len(client.calls) == 1
        await encoder.close()


async def test_a_large_request_is_split_at_the_models_max_batch_size() -> None:
    client = FlakyTriton([])
    with ThreadPoolExecutor(1) as executor:
        encoder = text_encoder(client, executor, max_batch=4)
        out = await encoder.encode([f"t{i}" for i in range(10)], "texts", timeout=5)
        await encoder.close()
    assert out.vectors.shape == (10, 4) and sorted(client.calls) == [2, 4, 4]
