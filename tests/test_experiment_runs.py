"""Every shipped MP-2018 `experiment=` overlay trains, as shipped, on a slice of the shared split.

The overlays' full runs take hours (the GPU-sized ones have never had a GPU), so a broken overlay
would otherwise surface only when one is launched. Each here reads the shared snapshot from its
own default path, builds graphs with its own settings and trains one epoch on 200 crystals.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from config_utils import EXPERIMENTS, compose_config
from conftest import MP2018_SNAPSHOT
from crystal_train.training.run import train

REPO_ROOT = Path(__file__).resolve().parents[1]
MP2018_EXPERIMENTS = [name for name in EXPERIMENTS if name.startswith("mp2018")]
UNITS = {"formation_energy_per_atom": "eV/atom", "band_gap": "eV"}


@pytest.fixture(scope="module")
def slice_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mp2018_slice_cache")


@pytest.mark.slow
@pytest.mark.skipif(not MP2018_SNAPSHOT.is_file(), reason=f"{MP2018_SNAPSHOT} is absent")
@pytest.mark.parametrize("experiment", MP2018_EXPERIMENTS)
def test_overlay_trains_on_a_slice_of_the_shared_split(experiment, slice_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # where the overlays' default ../shared/datasets path resolves, as in the docs
    monkeypatch.delenv("CRYSTAL_TRAIN_MP2018", raising=False)
    cfg = compose_config("train", [
        f"experiment={experiment}", "data.limit=200", "trainer.max_epochs=1", "trainer.device=cpu",
        "trainer.progress_bar=false", f"data.cache_dir={slice_cache}",
    ])
    run_dir = tmp_path / "run"
    best_val = train(cfg, run_dir)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    classifier = cfg.data.task == "classification"  # the metal overlays: class 1 where the band gap is 0 eV
    assert metrics["target"] == (f"{cfg.data.target} <= {cfg.data.positive_at_most:g}" if classifier else cfg.data.target)
    assert metrics["units"] == ("" if classifier else UNITS[cfg.data.target])
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert metrics["val"]["log_loss" if classifier else "mae"] == pytest.approx(best_val, rel=1e-5)
    # The source's own split, in proportion (44,376 / 3,653 / 3,120 of 51,149).
    assert (metrics["train"]["n"], metrics["val"]["n"], metrics["test"]["n"]) == (174, 14, 12)
    for split in ("train", "val", "test"):
        names = ("accuracy", "log_loss") if classifier else ("mae", "rmse", "r2")
        assert all(math.isfinite(metrics[split][name]) for name in names), (split, metrics[split])
    with open(run_dir / "predictions_test.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 12 and set(json.loads((run_dir / "split.json").read_text())["test"]) == {row["id"] for row in predictions}
    if cfg.data.target_min is not None:  # the band gap's 0 eV floor
        assert min(float(row["prediction"]) for row in predictions) >= cfg.data.target_min
