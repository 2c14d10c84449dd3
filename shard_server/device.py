"""The CPU/GPU seam: where a trained index lives. With no GPU (or faiss-cpu) everything stays on the CPU."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

import faiss

logger = logging.getLogger(__name__)


@functools.cache
def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_available() -> bool:
    return gpu_count() > 0


@functools.cache
def _resources() -> "faiss.StandardGpuResources":
    return faiss.StandardGpuResources()


def to_device(index: faiss.Index, use_gpu: bool) -> faiss.Index:
    """Clones a trained CPU index to GPU 0 when asked and a GPU exists; otherwise returns it unchanged."""
    if not (use_gpu and gpu_available()):
        return index
    return faiss.index_cpu_to_gpu(_resources(), 0, index)


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (for snapshots); a CPU index as is."""
    return index if can_remove(index) else faiss.index_gpu_to_cpu(index)


def can_remove(index: faiss.Index) -> bool:
    """GPU IVF indexes cannot remove ids: they rely on tombstones and a rebuild."""
    return not type(index).__name__.startswith("Gpu")


def name(use_gpu: bool) -> str:
    return "GPU" if use_gpu and gpu_available() else "CPU"


FAISS_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cpu")


def build(use_gpu: bool) -> str:
    """Which FAISS build this process loaded and where it searches, for the start-up log."""
    distributions = []
    for dist in FAISS_DISTRIBUTIONS:
        try:
            distributions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    options = faiss.get_compile_options().split() if hasattr(faiss, "get_compile_options") else []
    simd = next((o for o in options if o.startswith(("AVX", "SSE", "NEON", "SVE", "GENERIC"))), "generic")
    return (
        f"FAISS {faiss.__version__} ({', '.join(distributions) or 'built from source'}, {simd}); "
        f"{gpu_count()} GPU(s) visible; searching on the {name(use_gpu)}"
    )
