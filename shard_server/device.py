"""The CPU/GPU seam: where a trained index lives. With no GPU (or faiss-cpu) everything stays on the CPU."""

from __future__ import annotations

import functools
import logging

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
