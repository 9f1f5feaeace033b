"""A Hydra callback that writes sweep_summary.csv for a multirun, sorted by validation MAE."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "overrides", "status", "best_epoch", "epochs", "train_seconds", "val_mae", "val_rmse", "val_r2", "test_mae", "test_rmse", "test_r2", "run_dir",
)


def summarize_sweep(sweep_dir: Path) -> Path:
    """Collect each job's overrides and metrics.json into sweep_dir/sweep_summary.csv.

    A job without metrics.json (it diverged, was refused or crashed) gets status `failed` and
    empty metrics, and sorts last.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for overrides_path in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        run_dir = overrides_path.parent.parent
        metrics_path = run_dir / "metrics.json"
        row = {"overrides": " ".join(str(o) for o in OmegaConf.load(overrides_path)), "status": "failed", "run_dir": str(run_dir)}
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
            row.update(
                status="ok",
                best_epoch=metrics.get("best_epoch"),
                epochs=metrics.get("epochs"),
                train_seconds=metrics.get("train_seconds"),
                **{f"{split}_{name}": metrics[split][name] for split in ("val", "test") for name in ("mae", "rmse", "r2")},
            )
        rows.append(row)
    rows.sort(key=lambda row: float("inf") if row.get("val_mae") is None else row["val_mae"])
    path = sweep_dir / "sweep_summary.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


class SweepSummaryCallback(Callback):
    """Writes sweep_summary.csv into the multirun directory when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = summarize_sweep(Path(config.hydra.sweep.dir))
        log.info("Sweep summary: %s", path)
