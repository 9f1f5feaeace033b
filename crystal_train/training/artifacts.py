"""Files written into a run directory: metrics, predictions, splits, skipped items, history.

Each is written whole or not at all (atomic_write), so a run killed mid-write leaves the previous
version, never a truncated file that still parses.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from crystal_train.atomic_file import atomic_write

# A regression's history.csv columns; a classifier's have train_log_loss and val_log_loss for the MAEs.
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_mae", "val_mae", "seconds")


def metrics_report(results: dict[str, tuple[np.ndarray, np.ndarray]], target: str, units: str, transform, **extra) -> dict:
    """The metrics.json object: one entry per split (the task's metrics) plus, on test, the baseline of a model that
    learnt nothing: the training mean's MAE (regression), the training majority class's accuracy (classification)."""
    report = {name: transform.metrics(y, yhat) for name, (y, yhat) in results.items()}
    report.update(target=target, units=units, task=transform.task)
    if "test" in results and len(results["test"][0]):
        report.update(transform.baseline(results["test"][0]))
    report.update(extra)
    return report


def write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_config(path: Path, cfg: DictConfig) -> None:
    """The run's config with every interpolation resolved (what OmegaConf.save(resolve=True) writes)."""
    _write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file of `rows` under `header`."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    # backslashreplace: a file name that is not UTF-8 (it reaches Python as surrogates) is written as escapes, not a crash
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8", errors="backslashreplace")))


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_predictions(
    path: Path,
    ids: Sequence[str],
    predictions: np.ndarray,
    targets: np.ndarray | None = None,
    unseen: dict[str, list[str]] | None = None,
    spread: np.ndarray | None = None,
    warnings: dict[str, str] | None = None,
    formulas: Sequence[str] | None = None,
) -> None:
    """CSV of id, formula (when given), target (when known), prediction.

    With `spread` (an ensemble's) a member_std column gives the standard deviation of its members'
    predictions; with `unseen` ({id: element symbols the model never trained on}) an unseen_elements
    column marks the predictions that are extrapolations (space-separated symbols; empty for the others);
    with `warnings` ({id: note}) a structure_warnings column marks structures that look wrong.
    """
    header, columns = ["id"], [list(ids)]
    optional = (("formula", formulas), ("target", targets), ("prediction", predictions), ("member_std", spread))
    for name, values in optional:
        if values is not None:
            if len(values) != len(ids):  # zip would cut the file short without a word
                raise ValueError(f"{len(ids)} ids but {len(values)} values of {name} for {path}")
            header.append(name)
            columns.append(list(values) if name == "formula" else [repr(float(value)) for value in values])
    if unseen is not None:
        header.append("unseen_elements")
        columns.append([" ".join(unseen.get(item_id, [])) for item_id in columns[0]])
    if warnings is not None:
        header.append("structure_warnings")
        columns.append([warnings.get(item_id, "") for item_id in columns[0]])
    write_csv(path, header, zip(*columns))


def write_crystal_features(path: Path, ids: Sequence[str], features: np.ndarray) -> None:
    """CSV of id and feature_0 ... feature_<width-1>: each crystal's feature vector (float32: nine significant digits
    read back the same number)."""
    if len(features) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(features)} feature vectors for {path}")
    header = ["id", *feature_columns(features.shape[1])]
    write_csv(path, header, ([item_id, *(f"{value:.9g}" for value in row.tolist())] for item_id, row in zip(ids, features.astype(np.float32))))


def feature_columns(width: int) -> list[str]:
    """The names of a crystal feature vector's columns: feature_0 ... feature_<width-1>."""
    return [f"feature_{i}" for i in range(width)]


def write_skipped(path: Path, skipped: Iterable[tuple[str, str]]) -> None:
    write_csv(path, ["id", "reason"], skipped)


def write_history(path: Path, rows: Sequence[dict]) -> None:
    """history.csv: a column per key of the rows (HISTORY_COLUMNS for none)."""
    columns = tuple(rows[0]) if rows else HISTORY_COLUMNS
    write_csv(path, columns, ([_finite_or_nan(row[k]) for k in columns] for row in rows))


def _finite_or_nan(value):
    return "nan" if isinstance(value, float) and not math.isfinite(value) else value
