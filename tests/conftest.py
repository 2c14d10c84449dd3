"""Shared fixtures: seeded embedding-like vector sets with exact ground truth (generated, so the suite needs nothing
beside the repository), and helpers."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from shardsearch.tools.datasets import Dataset

# name -> (n, queries, dim, seed): small enough to generate in well under a second, big enough to train IVF-PQ shards.
# Scaled to norm 512, the scale of SIFT descriptors, which tests place other vectors against (far-off traffic).
DATASETS = {
    "l2-10k-128": (10_000, 100, 128, 7),  # the shape of a 10k SIFT subset, L2
    "l2-1k-784": (1_000, 500, 784, 8),  # the shape of a 1k Fashion-MNIST subset, L2
}


@functools.cache
def _generated(name: str) -> Dataset:
    n, nq, dim, seed = DATASETS[name]
    return Dataset.generate(n, nq, dim, metric="l2", seed=seed, clusters=max(10, n // 20), scale=512.0)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, queries, exact top-100 of every query), each a fresh copy: tests may not share state through it."""
    data = _generated(name)
    return data.base.copy(), data.queries.copy(), data.ground_truth.copy()


def write_dataset(folder: Path, name: str = "l2-10k-128") -> Path:
    """Writes a generated set as a dataset folder (base.npy, queries.npy, gt_top100.npy), the layout the tools read."""
    folder.mkdir(parents=True, exist_ok=True)
    base, queries, gt = load_dataset(name)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "gt_top100.npy", gt.astype(np.int32))
    return folder


def exact(vectors: np.ndarray, query: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact (order, scores) of `vectors` for one query, best first; metric "ip" (inner product) or "l2" (squared)."""
    if metric == "ip":
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")
    else:
        scores = ((vectors - query) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")
    return order, scores[order]


def recall_at_10(found_ids: list[list[int]], gt: np.ndarray) -> float:
    return float(np.mean([len(set(row[:10]) & set(gt[i, :10].tolist())) / 10 for i, row in enumerate(found_ids)]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under CI nothing may skip: a test that skips for a missing dependency (Redis, Triton, a package) fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI={os.environ['CI']!r}), where every test must run: {report.longrepr}"
