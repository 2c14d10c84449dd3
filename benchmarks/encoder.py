"""Encode throughput: texts/s and images/s through the coordinator, with and without the embedding cache, against
raw Triton on the same models, in one run.

    .venv/bin/python benchmarks/encoder.py --texts 1000 --images 400 --out docs/BENCHMARKS.md

Needs scripts/setup_triton.sh. Starts a real Triton server (scripts/triton_models.py: all-MiniLM-L6-v2 and the
deterministic image embedder), a redis-server (the embedding cache) and a one-shard cluster whose coordinator encodes.
Phases, each over the same distinct inputs:
- raw Triton: tritonclient.grpc.aio infer calls of `--batch` inputs (images already preprocessed), `--concurrency`
  in flight: the model's own rate here;
- coordinator, cold: `Encode` with one input per call from `--concurrency` callers (every input new: cache misses,
  the encoder's dynamic batcher gathers the calls);
- coordinator, warm: the same inputs again (every one a cache hit in Redis);
- coordinator, bulk: `Encode` with `--batch` inputs per call, cache off for these inputs (new ones).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from PIL import Image
from report import save
from tritonclient.grpc import InferInput, InferRequestedOutput

from shardsearch.encoder_client.preprocess import InputLimits, PixelSpec, preprocess_image
from shardsearch.tools.local import (
    TRITON_IMAGE_MODEL,
    TRITON_TEXT_MODEL,
    LocalCluster,
    RedisServer,
    TritonServer,
)
from shardsearch.v1 import search_pb2 as pb
from shardsearch.v1 import search_pb2_grpc

SECTION = "## Encoder"
SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "sentences.jsonl"


def texts(n: int, tag: str) -> list[str]:
    base = [json.loads(line)["text"] for line in SENTENCES.read_text().splitlines() if line.strip()]
    return [f"{base[i % len(base)]} ({tag} {i})" for i in range(n)]


def pictures(n: int, seed: int) -> list[bytes]:
    """Distinct 640x480 JPEG photos-to-be: coloured blocks on a gradient."""
    rng = np.random.default_rng(seed)
    out = []
    ramp = np.linspace(0, 1, 640, dtype=np.float32)[None, :, None]
    for _ in range(n):
        pixels = (ramp * rng.integers(0, 256, 3) + (1 - ramp) * rng.integers(0, 256, 3)).repeat(480, 0)
        for _ in range(6):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            pixels[y : y + rng.integers(20, 200), x : x + rng.integers(20, 200)] = rng.integers(0, 256, 3)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def timed(items: Sequence[Any], concurrency: int, call: Callable[[Any], Awaitable[None]]) -> float:
    """Runs call(item) for every item with `concurrency` workers; returns items per second."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await call(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - started)


async def raw_triton(url: str, text_inputs: list[str], pixel_inputs: np.ndarray, batch: int, concurrency: int) -> dict:
    client = triton_aio.InferenceServerClient(url)

    def chunks(values: Any) -> list[Any]:
        return [values[i : i + batch] for i in range(0, len(values), batch)]

    async def infer_texts(chunk: list[str]) -> None:
        data = np.array([[t.encode()] for t in chunk], dtype=np.object_)
        request = InferInput("text", list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        await client.infer(TRITON_TEXT_MODEL, [request], outputs=[InferRequestedOutput("text_embeds")])

    async def infer_pixels(chunk: np.ndarray) -> None:
        request = InferInput("pixel_values", list(chunk.shape), "FP32")
        request.set_data_from_numpy(chunk)
        await client.infer(TRITON_IMAGE_MODEL, [request], outputs=[InferRequestedOutput("image_embeds")])

    text_calls = await timed(chunks(text_inputs), concurrency, infer_texts)
    image_calls = await timed(chunks(pixel_inputs), concurrency, infer_pixels)
    await client.close()
    return {"texts_per_s": text_calls * batch, "images_per_s": image_calls * batch}


async def through_coordinator(address: str, kind: str, inputs: list[Any], per_call: int, concurrency: int) -> dict:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        cached = 0

        async def encode(chunk: list[Any]) -> None:
            nonlocal cached
            request = pb.EncodeRequest(texts=chunk) if kind == "text" else pb.EncodeRequest(images=chunk)
            reply = await stub.Encode(request, timeout=120)
            cached += sum(e.cached for e in reply.embeddings)

        calls = [inputs[i : i + per_call] for i in range(0, len(inputs), per_call)]
        rate = await timed(calls, concurrency, encode)
    return {"per_s": rate * per_call, "cached": cached, "n": len(inputs)}


async def measure(address: str, triton_url: str, n_texts: int, n_images: int, batch: int, concurrency: int) -> dict:
    text_cold = texts(n_texts, "cold")
    text_bulk = texts(n_texts, "bulk")
    image_cold = pictures(n_images, 1)
    image_bulk = pictures(n_images, 2)
    spec = PixelSpec("CHW", 224, 224, "float32")
    pixels = np.stack([preprocess_image(img, "image", spec, InputLimits()) for img in pictures(n_images, 3)])
    results: dict[str, Any] = {"raw": await raw_triton(triton_url, texts(n_texts, "raw"), pixels, batch, concurrency)}
    for kind, cold, bulk in (("text", text_cold, text_bulk), ("image", image_cold, image_bulk)):
        results[kind] = {
            "cold": await through_coordinator(address, kind, cold, 1, concurrency),
            "warm": await through_coordinator(address, kind, cold, 1, concurrency),
            "bulk": await through_coordinator(address, kind, bulk, batch, max(1, concurrency // 8)),
        }
    return results


def report(results: dict, command: str) -> str:
    raw = results["raw"]
    lines = [
        SECTION, "",
        f"`{command}` on {platform.machine()}, {os.cpu_count()} cores, no GPU; Triton (nvidia-pytriton), Redis, one "
        "shard and the coordinator on the same machine. Models: all-MiniLM-L6-v2 (`minilm_text`, torch on one CPU "
        "thread) and the deterministic image embedder (`tiny_image`, client-side CLIP preprocessing of 640x480 "
        "JPEGs). One run; compare ratios within it.", "",
        "| inputs | raw Triton (batches) | coordinator, 1 per call, cache cold | same, cache warm (Redis) | warm / cold "
        "| coordinator, batches, cold |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, key in (("text", "texts_per_s"), ("image", "images_per_s")):
        r = results[kind]
        lines.append(
            f"| {kind}s/s | {raw[key]:,.0f} | {r['cold']['per_s']:,.0f} ({r['cold']['per_s'] / raw[key]:.2f}x raw) | "
            f"{r['warm']['per_s']:,.0f} | {r['warm']['per_s'] / r['cold']['per_s']:.1f}x | "
            f"{r['bulk']['per_s']:,.0f} ({r['bulk']['per_s'] / raw[key]:.2f}x raw) |"
        )
    lines += [
        "",
        f"Cache hits in the warm passes: {results['text']['warm']['cached']} of {results['text']['warm']['n']} texts, "
        f"{results['image']['warm']['cached']} of {results['image']['warm']['n']} images (cold passes: "
        f"{results['text']['cold']['cached']} and {results['image']['cold']['cached']}). A cold text costs a model "
        "call (here the model is the limit: one CPU thread of torch); a warm one costs one Redis MGET. A cold image "
        "also costs its decoding, resizing and normalisation in the coordinator (Pillow, in a thread pool); a warm "
        "one costs hashing the bytes and the Redis round trip.", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, help="Markdown report to update (its Encoder section)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/encoder.json"))
    args = parser.parse_args()
    with TritonServer() as triton, RedisServer() as redis:
        coordinator_args = [*triton.coordinator_args(), "--redis-url", redis.url]
        with LocalCluster(shards=1, coordinator_args=coordinator_args) as cluster:
            results = asyncio.run(
                measure(cluster.address, triton.url, args.texts, args.images, args.batch, args.concurrency)
            )
    command = (f"python benchmarks/encoder.py --texts {args.texts} --images {args.images} --batch {args.batch} "
               f"--concurrency {args.concurrency}")
    save(results, args.json, SECTION, report(results, command), args.out)


if __name__ == "__main__":
    main()
