"""Parity (regression), ROC (classification), learning-curve and errors-by-element plots for a run directory.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot,
so the caller's backend and pyplot's figure registry are left untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from crystal_train.atomic_file import atomic_write
from crystal_train.training.metrics import METRIC_LABELS, classification_metrics, plus_standard_error, regression_metrics

FIGSIZE = (6.0, 5.0)
DPI = 150
DENSE_N = 2000  # above this many points the parity plot uses a hexbin instead of a scatter

_TRAIN_COLOR, _VAL_COLOR, _LR_COLOR, _DIAGONAL_COLOR = "tab:blue", "tab:orange", "tab:green", "0.35"
_BOX = dict(boxstyle="round,pad=0.4", facecolor="white", edgecolor="0.7", alpha=0.9)


def _new_figure() -> Figure:
    figure = Figure(figsize=FIGSIZE)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Write the figure as a PNG (atomically, like every run file) and release its artists."""
    path = Path(path)
    atomic_write(path, lambda handle: figure.savefig(handle, dpi=DPI, format="png"))
    figure.clear()
    return path


def _axis_label(quantity: str, units: str) -> str:
    return f"{quantity} ({units})" if units else quantity


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:#.3g}"


def parity_annotation(metrics: dict, units: str) -> str:
    """The MAE (± its standard error) / RMSE / R² / n block written on a parity plot."""
    suffix = f" {units}" if units else ""
    return "\n".join(
        [
            f"MAE = {_fmt(metrics['mae'])}{plus_standard_error(metrics)}{suffix}",
            f"RMSE = {_fmt(metrics['rmse'])}{suffix}",
            f"R² = {_fmt(metrics['r2'])}",
            f"n = {metrics['n']:,}",
        ]
    )


def make_parity_figure(
    targets: np.ndarray,
    predictions: np.ndarray,
    target_name: str,
    units: str,
    split: str = "test",
    title: str | None = None,
) -> Figure:
    """Predicted vs reference values (the data's labels: DFT for Materials Project, EMT for the demo): scatter (or
    log-count hexbin when dense), y = x and metrics."""
    targets = np.asarray(targets, dtype=np.float64).ravel()
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    if targets.shape != predictions.shape:
        raise ValueError(f"{targets.size} targets but {predictions.size} predictions")
    finite = np.isfinite(targets) & np.isfinite(predictions)
    dropped = int(targets.size - finite.sum())
    targets, predictions = targets[finite], predictions[finite]
    dropped_note = f"\n({dropped:,} non-finite pairs dropped)" if dropped else ""

    figure = _new_figure()
    ax = figure.add_subplot()
    ax.set_xlabel(_axis_label(f"Reference {target_name}", units))
    ax.set_ylabel(_axis_label(f"Predicted {target_name}", units))
    ax.set_title(title if title is not None else f"{split} split")

    if targets.size == 0:
        ax.text(0.5, 0.5, "no data" + dropped_note, transform=ax.transAxes, ha="center", va="center", fontsize=14)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.tight_layout()
        return figure

    low = float(min(targets.min(), predictions.min()))
    high = float(max(targets.max(), predictions.max()))
    pad = 0.05 * (high - low) if high > low else max(0.05 * abs(high), 0.5)
    low, high = low - pad, high + pad
    ax.plot([low, high], [low, high], linestyle="--", linewidth=1, color=_DIAGONAL_COLOR, zorder=3)
    if targets.size > DENSE_N:
        cells = ax.hexbin(targets, predictions, gridsize=60, extent=(low, high, low, high), mincnt=1, norm=LogNorm(), cmap="viridis")
        figure.colorbar(cells, ax=ax, label="count")
    else:
        ax.scatter(targets, predictions, s=14 if targets.size <= 500 else 6, alpha=0.6, edgecolors="none", zorder=2)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")
    annotation = parity_annotation(regression_metrics(targets, predictions), units) + dropped_note
    ax.text(0.04, 0.96, annotation, transform=ax.transAxes, ha="left", va="top", bbox=_BOX, zorder=4)
    figure.tight_layout()
    return figure


def parity_plot(
    targets: np.ndarray,
    predictions: np.ndarray,
    path: Path,
    target_name: str,
    units: str,
    split: str = "test",
    title: str | None = None,
) -> Path:
    """Save :func:`make_parity_figure` as a PNG at ``path``."""
    return _save(make_parity_figure(targets, predictions, target_name, units, split=split, title=title), path)


def make_roc_figure(labels: np.ndarray, probabilities: np.ndarray, target_name: str, split: str = "test", title: str | None = None) -> Figure:
    """The ROC curve of a binary classifier (true against false positive rate as the threshold on the probability of
    class 1 falls), with accuracy, ROC AUC, F1 and n."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=np.float64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if labels.shape != probabilities.shape:
        raise ValueError(f"{labels.size} labels but {probabilities.size} predictions")
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title if title is not None else f"{split} split")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.plot([0, 1], [0, 1], linestyle="--", linewidth=1, color=_DIAGONAL_COLOR)
    scores = classification_metrics(labels, probabilities)
    if scores["roc_auc"] is not None:
        false_positive, true_positive, _ = roc_curve(labels, probabilities)
        ax.plot(false_positive, true_positive, color=_VAL_COLOR, linewidth=1.8)
    annotation = "\n".join(
        [f"class 1: {target_name}"] + [f"{METRIC_LABELS[key]} = {_fmt(scores[key])}" for key in ("roc_auc", "accuracy", "f1")]
        + [f"n = {scores['n']:,}" + ("" if scores["roc_auc"] is not None else " (one class: no curve)")]
    )
    # lower right: below a good classifier's curve, which hugs the upper left
    ax.text(0.96, 0.04, annotation, transform=ax.transAxes, ha="right", va="bottom", bbox=_BOX, zorder=4)
    figure.tight_layout()
    return figure


def roc_plot(labels: np.ndarray, probabilities: np.ndarray, path: Path, target_name: str, split: str = "test", title: str | None = None) -> Path:
    """Save :func:`make_roc_figure` as a PNG at ``path``."""
    return _save(make_roc_figure(labels, probabilities, target_name, split=split, title=title), path)


def _column(history: list[dict], key: str) -> np.ndarray:
    return np.array([math.nan if row.get(key) is None else float(row[key]) for row in history], dtype=np.float64)


def make_learning_curve_figure(history: list[dict], units: str, best_epoch: int | None = None) -> Figure:
    """Train/val score per epoch (MAE, or a classifier's log loss) with the selected epoch marked and the learning
    rate on a twin axis.

    `best_epoch` is the epoch of the kept checkpoint (with trainer.min_delta it need not have the
    lowest val score); without it the lowest val score is marked.
    """
    score = "log_loss" if history and "val_log_loss" in history[0] else "mae"
    label = METRIC_LABELS[score]
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.set_xlabel("epoch")
    ax.set_ylabel(_axis_label(label, units))
    if not history:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.tight_layout()
        return figure

    epochs = _column(history, "epoch")
    train_score, val_score, lr = _column(history, f"train_{score}"), _column(history, f"val_{score}"), _column(history, "lr")
    marker = "o" if len(history) <= 50 else None
    ax.plot(epochs, train_score, color=_TRAIN_COLOR, marker=marker, markersize=3, label=f"train {label} (running, training mode)")
    ax.plot(epochs, val_score, color=_VAL_COLOR, marker=marker, markersize=3, label=f"val {label}")
    best = _marked_epoch_index(epochs, val_score, best_epoch)
    if best is not None:
        ax.axvline(epochs[best], color=_VAL_COLOR, linestyle=":", linewidth=1)
        ax.plot(
            epochs[best], val_score[best], linestyle="none", marker="*", markersize=14, color=_VAL_COLOR,
            markeredgecolor="black", zorder=5,
            label=f"best val {_fmt(val_score[best])}{' ' + units if units else ''} (epoch {int(epochs[best])})",
        )
    values = np.concatenate([train_score, val_score])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > 10:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs.min() == epochs.max():
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)

    lr_ax = ax.twinx()
    lr_ax.plot(epochs, lr, color=_LR_COLOR, linestyle="--", linewidth=1.2, drawstyle="steps-mid", label="learning rate")
    if (lr[np.isfinite(lr)] > 0).all():
        lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate", color=_LR_COLOR)
    lr_ax.tick_params(axis="y", which="both", colors=_LR_COLOR)

    handles, labels = ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
    ax.legend(
        handles + lr_handles, labels + lr_labels, loc="lower left", bbox_to_anchor=(0.0, 1.01, 1.0, 0.1),
        mode="expand", ncol=2 if max(map(len, labels)) <= 36 else 1, frameon=False, borderaxespad=0.0,  # one column for long labels
    )
    figure.tight_layout()
    return figure


def _marked_epoch_index(epochs: np.ndarray, val_score: np.ndarray, best_epoch: int | None) -> int | None:
    """Row of `best_epoch` if the history has it, else of the lowest val score (None when there is none)."""
    if best_epoch is not None and best_epoch in epochs:
        return int(np.flatnonzero(epochs == best_epoch)[0])
    return int(np.nanargmin(val_score)) if np.isfinite(val_score).any() else None


def learning_curve_plot(history: list[dict], path: Path, units: str, best_epoch: int | None = None) -> Path:
    """Save :func:`make_learning_curve_figure` as a PNG at ``path``."""
    return _save(make_learning_curve_figure(history, units, best_epoch), path)


def _table_cell(z: int) -> tuple[float, int]:
    """(row, column) of element `z` in the periodic table, lanthanides and actinides in two rows below it."""
    from pymatgen.core.periodic_table import Element

    if 57 <= z <= 71 or 89 <= z <= 103:
        return (8.5 if z <= 71 else 9.5), 3 + z - (57 if z <= 71 else 89)
    element = Element.from_Z(z)
    return element.row, element.group


def make_element_figure(rows: list[dict], metric: str, units: str, split: str = "test", title: str | None = None) -> Figure:
    """A periodic table coloured by each element's `metric` (rows as errors_by_element gives them), with the value and
    its number of crystals written in; elements without crystals, or without a finite value of it, are left grey."""
    from ase.data import chemical_symbols

    scored = {row["z"]: row for row in rows if row.get(metric) is not None and math.isfinite(row[metric])}
    values = [row[metric] for row in scored.values()]
    norm = Normalize(min(values, default=0.0), max(values, default=1.0))
    cmap = colormaps["viridis"]
    figure = Figure(figsize=(12.0, 6.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for z in range(1, max([103, *(row["z"] for row in rows)]) + 1):  # to Lr, or as far as the rows go
        row, column = _table_cell(z)
        shade = norm(scored[z][metric]) if z in scored else None
        ax.add_patch(Rectangle((column - 0.47, row - 0.47), 0.94, 0.94, facecolor="0.93" if shade is None else cmap(shade), edgecolor="0.6", linewidth=0.5))
        ink = "0.55" if shade is None else ("black" if shade > 0.6 else "white")  # legible on viridis' dark and light ends
        ax.text(column, row - 0.18, chemical_symbols[z], ha="center", va="center", fontsize=8, color=ink, weight="bold")
        if z in scored:
            ax.text(column, row + 0.08, f"{scored[z][metric]:.3g}", ha="center", va="center", fontsize=5.5, color=ink)
            ax.text(column, row + 0.3, f"n={scored[z]['n']}", ha="center", va="center", fontsize=4.5, color=ink)
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(10.1, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title if title is not None else f"{split} split, by element")
    label = _axis_label(f"{split} {METRIC_LABELS[metric]}", units)
    figure.colorbar(ScalarMappable(norm, cmap), ax=ax, label=label, shrink=0.6, pad=0.01)
    return figure


def element_plot(rows: list[dict], path: Path, metric: str, units: str, split: str = "test", title: str | None = None) -> Path:
    """Save :func:`make_element_figure` as a PNG at ``path``."""
    return _save(make_element_figure(rows, metric, units, split=split, title=title), path)
