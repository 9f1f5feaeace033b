"""Files written into a run directory: metrics, predictions, splits, skipped items, history."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from crystal_train.training.metrics import regression_metrics

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_mae", "val_mae", "seconds")


def metrics_report(
    results: dict[str, tuple[np.ndarray, np.ndarray]], target: str, units: str, train_mean: float, **extra
) -> dict:
    """The metrics.json object: one entry per split plus the mean-predictor baseline on test."""
    report = {name: regression_metrics(y, yhat) for name, (y, yhat) in results.items()}
    report.update(target=target, units=units)
    if "test" in results and len(results["test"][0]):
        report["baseline_test_mae"] = float(np.mean(np.abs(results["test"][0] - train_mean)))
    report.update(extra)
    return report


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_predictions(path: Path, ids: Sequence[str], predictions: np.ndarray, targets: np.ndarray | None = None) -> None:
    """CSV of id, target, prediction (or id, prediction when there are no targets)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if targets is None:
            writer.writerow(["id", "prediction"])
            writer.writerows((i, repr(float(p))) for i, p in zip(ids, predictions))
        else:
            writer.writerow(["id", "target", "prediction"])
            writer.writerows((i, repr(float(t)), repr(float(p))) for i, t, p in zip(ids, targets, predictions))


def write_skipped(path: Path, skipped: Iterable[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "reason"])
        writer.writerows(skipped)


def write_history(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (row[k] if not isinstance(row[k], float) or math.isfinite(row[k]) else "nan") for k in HISTORY_COLUMNS})
