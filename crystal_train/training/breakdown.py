"""Errors by element: the task's metrics over the crystals of a split that hold each element."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from crystal_train.data.store import GraphStore
from crystal_train.training import artifacts


def element_breakdown(store: GraphStore, indices: np.ndarray, predictions: np.ndarray, transform) -> list[dict]:
    """One row per element present, by atomic number: `element`, `z`, then `transform.metrics` (n, and MAE, RMSE, R²
    or a classifier's scores) over the crystals at `indices` that hold it, `predictions` in their order. A crystal
    counts once for each of its elements."""
    indices = np.asarray(indices, dtype=np.int64)
    position = np.full(len(store), -1, dtype=np.int64)
    position[indices] = np.arange(indices.size)
    owner = position[np.repeat(np.arange(len(store)), np.diff(store.node_ptr))]  # each atom's place in `indices`, or -1
    kept = owner >= 0
    pairs = np.unique(owner[kept] * 256 + store.numbers[kept].astype(np.int64))  # (crystal, element), each once
    crystals, numbers = pairs // 256, pairs % 256
    targets = store.targets[indices]
    rows = []
    for z in np.unique(numbers):
        holding = crystals[numbers == z]
        rows.append({"element": chemical_symbols[int(z)], "z": int(z), **transform.metrics(targets[holding], predictions[holding])})
    return rows


def write_element_breakdown(path: Path, rows: list[dict], transform) -> None:
    """errors_by_element_<split>.csv: element, z, n and the task's metrics (empty where undefined, as R² of one value,
    or not finite); a split without crystals gets the header alone."""
    metrics = [name for name in transform.metrics(np.empty(0), np.empty(0)) if name != "n"]
    header = ["element", "z", "n", *metrics]
    artifacts.write_csv(path, header, ([_cell(row[key]) for key in header] for row in rows))


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
