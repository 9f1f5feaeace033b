"""A Hydra callback that writes sweep_summary.csv for a multirun, sorted by validation MAE."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crystal_train.training.artifacts import write_csv

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"  # written into a job's directory by crystal-train when the job fails

SUMMARY_COLUMNS = (
    "overrides", "status", "best_epoch", "epochs", "train_seconds", "val_mae", "val_rmse", "val_r2", "test_mae", "test_rmse", "test_r2", "run_dir",
)


def summarize_sweep(sweep_dir: Path) -> tuple[Path, int, int]:
    """Collect each job's overrides and metrics.json into sweep_dir/sweep_summary.csv.

    A job that wrote error.txt (it diverged, was refused or raised) or has no metrics.json gets
    status `failed` and empty metrics (a metrics.json left by an earlier run of it is ignored),
    and sorts last. Returns (summary path, failed jobs, jobs).
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for run_dir in sorted((path for path in sweep_dir.iterdir() if _is_job_dir(path)), key=_job_order):
        metrics_path = run_dir / "metrics.json"
        overrides_path = run_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_path) if overrides_path.exists() else []
        row = {"overrides": " ".join(str(o) for o in overrides), "status": "failed", "run_dir": str(run_dir)}
        if metrics_path.exists() and not (run_dir / ERROR_FILE).exists():
            metrics = json.loads(metrics_path.read_text())
            row.update(
                status="ok",
                best_epoch=metrics.get("best_epoch"),
                epochs=metrics.get("epochs"),
                train_seconds=metrics.get("train_seconds"),
                **{f"{split}_{name}": metrics.get(split, {}).get(name) for split in ("val", "test") for name in ("mae", "rmse", "r2")},
            )
        rows.append(row)
    rows.sort(key=lambda row: float("inf") if row.get("val_mae") is None else row["val_mae"])
    path = sweep_dir / "sweep_summary.csv"
    write_csv(path, SUMMARY_COLUMNS, ([row.get(column, "") for column in SUMMARY_COLUMNS] for row in rows))
    return path, sum(row["status"] == "failed" for row in rows), len(rows)


def _job_order(path: Path) -> tuple:
    """Hydra's numbered job directories in number order (2 before 10), anything else after them by name."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _is_job_dir(path: Path) -> bool:
    """A job's directory: Hydra's .hydra/ (absent with hydra.output_subdir=null), results or an error."""
    return path.is_dir() and any((path / name).exists() for name in (".hydra", "metrics.json", ERROR_FILE))


class SweepSummaryCallback(Callback):
    """Writes sweep_summary.csv into the multirun directory when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path, failed, jobs = summarize_sweep(Path(config.hydra.sweep.dir))
        if failed:
            log.warning("%d of %d jobs failed; their errors are in each job's %s and train.log", failed, jobs, ERROR_FILE)
        log.info("Sweep summary: %s", path)
