"""Errors by element: the task's metrics over the crystals of a split that hold each element."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from crystal_train.data.store import GraphStore
from crystal_train.training import artifacts


def element_breakdown(
    store: GraphStore, indices: np.ndarray, predictions: np.ndarray, transform, training_counts: dict[int, int] | None = None
) -> list[dict]:
    """One row per element present, by atomic number: `element`, `z`, then `transform.metrics` (n, and MAE, RMSE, R²
    or a classifier's scores) over the crystals at `indices` that hold it, `predictions` in their order, and `n_train`,
    how many training crystals held it (from `training_counts`; None when not known). A crystal counts once for each
    of its elements."""
    crystals, numbers = store.element_holders(indices)
    targets = store.targets[np.asarray(indices, dtype=np.int64)]
    rows = []
    for z in np.unique(numbers):
        holding = crystals[numbers == z]
        n_train = None if training_counts is None else training_counts.get(int(z), 0)
        rows.append({
            "element": chemical_symbols[int(z)], "z": int(z), **transform.metrics(targets[holding], predictions[holding]), "n_train": n_train,
        })
    return rows


def write_element_breakdown(path: Path, rows: list[dict], transform) -> None:
    """errors_by_element_<split>.csv: element, z, n, n_train and the task's metrics (empty where undefined, as R² of
    one value, or not finite, or unknown, as n_train for a checkpoint that does not record it); a split without crystals
    gets the header alone."""
    metrics = [name for name in transform.metrics(np.empty(0), np.empty(0)) if name != "n"]
    header = ["element", "z", "n", "n_train", *metrics]
    artifacts.write_csv(path, header, ([_cell(row[key]) for key in header] for row in rows))


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
