"""Shared fixtures: the real-data folder (../shared/data) and helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = DATA / name
    if not folder.exists():
        pytest.skip(f"real vector data not found at {folder} (expected ../shared/data beside the project)")
    return (
        np.load(folder / "base.npy").astype(np.float32),
        np.load(folder / "queries.npy").astype(np.float32),
        np.load(folder / "gt_top100.npy"),
    )


def recall_at_10(found_ids: list[list[int]], gt: np.ndarray) -> float:
    return float(np.mean([len(set(row[:10]) & set(gt[i, :10].tolist())) / 10 for i, row in enumerate(found_ids)]))
