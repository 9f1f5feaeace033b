"""A Hydra callback that writes sweep_summary.csv for a multirun, sorted by validation score (MAE, or a classifier's log loss)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crystal_train.secrets_guard import take_api_key
from crystal_train.training.artifacts import write_csv
from crystal_train.training.metrics import METRIC_LABELS

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"  # written into a job's directory by crystal-train when the job fails

SUMMARY_COLUMNS = (
    "overrides", "status", "best_epoch", "epochs", "train_seconds", "val_mae", "val_rmse", "val_r2", "test_mae", "test_mae_stderr", "test_rmse", "test_r2", "run_dir",
)
# A sweep of classifiers (data.task=classification) reports these metrics in place of MAE, RMSE and R².
CLASSIFICATION_METRICS = ("log_loss", "accuracy", "roc_auc")


def summarize_sweep(sweep_dir: Path, output_subdir: str | None = ".hydra", since: float | None = None) -> tuple[Path, int, int]:
    """Collect each job's overrides (from Hydra's `output_subdir`) and metrics.json into sweep_dir/sweep_summary.csv.

    A job that wrote error.txt (it diverged, was refused or raised) or has no metrics.json gets
    status `failed` and empty metrics (a metrics.json left by an earlier run of it is ignored),
    and sorts last. With `since` (the sweep's start, by the file system's clock), job folders no file of which
    changed since then are an earlier sweep's in the same folder, and are left out.
    Returns (summary path, failed jobs, jobs).
    """
    sweep_dir = Path(sweep_dir)
    jobs = _job_dirs(sweep_dir, output_subdir)
    if since is not None:
        earlier = [job for job in jobs if _last_change(job) < since]
        if earlier:
            log.info("Left out %d job folder(s) of an earlier sweep in %s: %s", len(earlier), sweep_dir, ", ".join(job.name for job in earlier[:5]))
        jobs = [job for job in jobs if job not in earlier]
    rows, tasks = [], set()
    for run_dir in sorted(jobs, key=_job_order):
        metrics_path = run_dir / "metrics.json"
        overrides_path = run_dir / output_subdir / "overrides.yaml" if output_subdir else None
        overrides = OmegaConf.load(overrides_path) if overrides_path is not None and overrides_path.exists() else []
        row = {"overrides": " ".join(str(o) for o in overrides), "status": "failed", "run_dir": str(run_dir)}
        if metrics_path.exists() and not (run_dir / ERROR_FILE).exists():
            metrics = json.loads(metrics_path.read_text())
            row.update(
                task=metrics.get("task", "regression"),
                status="ok",
                best_epoch=metrics.get("best_epoch"),
                epochs=metrics.get("epochs"),
                train_seconds=metrics.get("train_seconds"),
                **{f"{split}_{name}": value for split in ("val", "test") for name, value in metrics.get(split, {}).items()},
            )
        rows.append(row)
        tasks.add(row.get("task"))
    columns = _columns(tasks)
    rows.sort(key=_rank)
    path = sweep_dir / "sweep_summary.csv"
    write_csv(path, columns, ([row.get(column, "") for column in columns] for row in rows))
    _log_cross_validation(rows)
    return path, sum(row["status"] == "failed" for row in rows), len(rows)


def _columns(tasks: set) -> tuple[str, ...]:
    """SUMMARY_COLUMNS, with CLASSIFICATION_METRICS in place of the regression metrics for a sweep of classifiers, or
    after them (and a task column) for a sweep of both."""
    if "classification" not in tasks:
        return SUMMARY_COLUMNS
    scores = tuple(f"{split}_{name}" for split in ("val", "test") for name in CLASSIFICATION_METRICS)
    if "regression" not in tasks:
        return (*SUMMARY_COLUMNS[:5], *scores, SUMMARY_COLUMNS[-1])
    return (*SUMMARY_COLUMNS[:2], "task", *SUMMARY_COLUMNS[2:-1], *scores, SUMMARY_COLUMNS[-1])


def _log_cross_validation(rows: list[dict]) -> None:
    """For the finished jobs that differ only in data.split.fold (K-fold cross-validation), log the mean and sample
    standard deviation over their folds of the test MAE (a classifier's test log loss)."""
    folds: dict[tuple, list[float]] = {}
    for row in rows:
        overrides = row["overrides"].split()
        score = _score(row)
        if row["status"] == "ok" and row.get(f"test_{score}") is not None and any(o.startswith("data.split.fold=") for o in overrides):
            rest = " ".join(o for o in overrides if not o.startswith("data.split.fold="))
            folds.setdefault((rest, score), []).append(float(row[f"test_{score}"]))
    for (rest, score), values in folds.items():
        if len(values) > 1:
            log.info(
                "Cross-validation%s: test %s %.4g ± %.2g, the mean and sample standard deviation over %d folds",
                f" of {rest}" if rest else "", METRIC_LABELS[score], np.mean(values), np.std(values, ddof=1), len(values),
            )


def _score(row: dict) -> str:
    """The metric a job is ranked and cross-validated by: MAE, a classifier's log loss."""
    return "log_loss" if row.get("task") == "classification" else "mae"


def _rank(row: dict) -> tuple:
    """Regressions by validation MAE, then classifiers by validation log loss, then failed jobs."""
    score = row.get(f"val_{_score(row)}")
    return (row.get("task") is None, row.get("task") == "classification", float("inf") if score is None else score)


def _last_change(job: Path) -> float:
    """When the newest file directly in `job` or in its subfolders (.hydra/, checkpoints/) last changed."""
    times = [path.lstat().st_mtime for path in job.iterdir()]
    times += [path.lstat().st_mtime for folder in job.iterdir() if folder.is_dir() for path in folder.iterdir()]
    return max(times, default=0.0)


def _filesystem_now(folder: Path) -> float:
    """The time by the clock of the file system `folder` is on (a cluster's shared one may differ from this node's)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".clock-") as probe:
        return os.fstat(probe.fileno()).st_mtime


def _job_order(path: Path) -> tuple:
    """Hydra's numbered job directories in number order (2 before 10), anything else after them by name."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _job_dirs(folder: Path, output_subdir: str | None) -> list[Path]:
    """The job directories under `folder`, at any depth (hydra.sweep.subdir may nest them), not searched inside."""
    marks = [name for name in (output_subdir, "metrics.json", ERROR_FILE) if name]  # no config copies with output_subdir=null
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            found += [path] if any((path / mark).exists() for mark in marks) else _job_dirs(path, output_subdir)
    return found


class SweepSummaryCallback(Callback):
    """Writes sweep_summary.csv into the multirun directory when the sweep ends; exits with status 1 if a job failed,
    so that a batch script can tell."""

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Before the sweeper saves the config as multirun.yaml: a key put in a config file goes into MP_API_KEY, and
        out of that copy even when no job runs (each job takes it out of its own copies)."""
        take_api_key(config)
        self.started = _filesystem_now(Path(config.hydra.sweep.dir)) - 1.0  # a second of slack for coarse file times

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path, failed, jobs = summarize_sweep(Path(config.hydra.sweep.dir), config.hydra.output_subdir, since=self.started)
        log.info("Sweep summary: %s", path)
        if failed:
            log.warning("%d of %d jobs failed; their errors are in each job's %s and train.log", failed, jobs, ERROR_FILE)
            sys.exit(1)
