"""data.target_min: a target's physical lower bound (band gap 0 eV) floors every prediction made."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from config_utils import compose_config
from conftest import good_structures
from graph_utils import make_trainer, random_crystals
from crystal_train.training.evaluation import evaluate
from crystal_train.training.prediction import run_predict
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.store import build_store
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.inference import predict
from crystal_train.training.metrics import Normalizer
from crystal_train.training.run import train

TINY_RUN = [
    "data=mp_gap", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=2", "trainer.batch_size=2",
    "model.atom_fea_len=8", "model.n_conv=1", "model.h_fea_len=8", "seed=0",
]


def test_normalizer_floors_arrays_and_tensors_and_keeps_the_floor_in_its_state():
    outputs = [-1.0, -0.25, 0.0, 1.0]  # 0.5 + 2 × output: -1.5, 0.0, 0.5, 2.5
    floored = Normalizer.fit(np.array([-1.5, 2.5]), minimum=0.0)  # mean 0.5, std 2
    assert floored.denormalize(np.array(outputs)).tolist() == [0.0, 0.0, 0.5, 2.5]
    assert floored.denormalize(torch.tensor(outputs)).tolist() == [0.0, 0.0, 0.5, 2.5]
    assert Normalizer(0.5, 2.0).denormalize(np.array(outputs)).tolist() == [-1.5, 0.0, 0.5, 2.5]
    assert Normalizer(**floored.state()) == floored
    assert Normalizer(**{"mean": 0.5, "std": 2.0}).minimum is None  # a checkpoint written before the floor existed


def test_band_gap_config_floors_at_zero_and_formation_energy_has_no_floor():
    assert compose_config("train", ["data=mp_gap"]).data.target_min == 0.0
    assert compose_config("train", ["data=mp_formation"]).data.target_min is None


def test_targets_below_the_floor_stop_the_run_naming_them(compose_train_cfg, write_csv, good_rows, tmp_path):
    snapshot = write_csv(good_rows)
    gap = compose_train_cfg(["data=mp_gap", f"data.snapshot={snapshot}"], tmp_path)
    assert len(prepare_data(gap.data, graph_settings(gap.graph)).store) == 5  # gaps 0–1 eV all pass the 0 eV floor
    formation = compose_train_cfg(["data=mp_gap", f"data.snapshot={snapshot}", "data.target=formation_energy_per_atom"], tmp_path)
    with pytest.raises(ValueError, match=r"5 crystal\(s\) have a formation_energy_per_atom below it: mp-nacl \(-0.5\), mp-si \(-1\)") as error:
        prepare_data(formation.data, graph_settings(formation.graph))
    assert "data.target_min=null" in str(error.value)


def test_validation_scores_the_floored_predictions(tmp_path):
    store = build_store(random_crystals(12), lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)
    graphs, indices = DeviceGraphs(store, "cpu"), np.arange(12)
    trainer = make_trainer(graphs, "cgcnn", 12, tmp_path)
    raw = predict(trainer.model, graphs, indices, Normalizer(5.0, 3.0), batch_size=4)
    floor = float(np.median(raw))  # half the predictions lie below it
    trainer.normalizer = Normalizer(5.0, 3.0, minimum=floor)
    floored = predict(trainer.model, graphs, indices, trainer.normalizer, batch_size=4)
    np.testing.assert_array_equal(floored, np.maximum(raw, floor))
    # float32 outputs of other batch shapes can differ in the last bits; the floor moves the MAE far more than 1e-6.
    assert trainer._validate() == pytest.approx(np.mean(np.abs(floored - store.targets)), rel=1e-6)
    assert abs(np.mean(np.abs(floored - store.targets)) - np.mean(np.abs(raw - store.targets))) > 1e-3


def test_eval_and_predict_apply_the_floor_saved_in_the_checkpoint(compose_train_cfg, write_csv, good_rows, tmp_path):
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", *TINY_RUN], tmp_path)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert checkpoint["normalizer"]["minimum"] == 0.0
    # a floor above every target and prediction makes each prediction equal to it
    raised = tmp_path / "raised.pt"
    save_checkpoint(raised, **{**checkpoint, "normalizer": {**checkpoint["normalizer"], "minimum": 50.0}})

    report = evaluate(compose_config("eval", [f"ckpt={raised}", f"output={tmp_path / 'eval'}", "device=cpu", "split=all"]))
    gaps = [row["band_gap"] for row in good_rows]
    for name in ("train", "val", "test"):
        with open(tmp_path / "eval" / f"predictions_{name}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [float(row["prediction"]) for row in rows] == [50.0] * len(rows)
        assert report[name]["mae"] == pytest.approx(np.mean([50.0 - float(row["target"]) for row in rows]))
        assert all(float(row["target"]) in gaps for row in rows)

    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for item_id, structure in good_structures().items():
        structure.to(filename=str(cifs / f"{item_id}.cif"))
    output = run_predict(compose_config("predict", [f"ckpt={raised}", f"input={cifs}", f"output={tmp_path / 'predicted.csv'}", "device=cpu"]))
    with open(output, newline="") as handle:
        assert [float(row["prediction"]) for row in csv.DictReader(handle)] == [50.0] * 5
    # an ensemble with a member that has no floor (trained before data.target_min existed) keeps the other's
    unfloored = tmp_path / "unfloored.pt"
    save_checkpoint(unfloored, **{**checkpoint, "normalizer": {**checkpoint["normalizer"], "minimum": None}})
    both = f"ckpt=[{raised},{unfloored}]"
    output = run_predict(compose_config("predict", [both, f"input={cifs}", f"output={tmp_path / 'both.csv'}", "device=cpu"]))
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["prediction"]) for row in rows] == [50.0] * 5 and all(float(row["member_std"]) > 1.0 for row in rows)


def test_eval_scores_another_source_with_labels_below_the_floor_and_names_them(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", *TINY_RUN], tmp_path)
    train(cfg, tmp_path / "run")
    rows = [dict(row) for row in good_rows]
    rows[0]["band_gap"] = -0.05  # a noisy external label below 0 eV
    other = write_csv(rows, "other.csv")
    with caplog.at_level("WARNING"):
        report = evaluate(compose_config("eval", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", f"data.snapshot={other}",
                                                  f"output={tmp_path / 'eval'}", "device=cpu"]))
    assert report["source"]["n"] == len(rows)
    assert f"1 crystal(s) of {other} have a band_gap below 0, the lower bound" in caplog.text and f"{rows[0]['material_id']} (-0.05)" in caplog.text
    with open(tmp_path / "eval" / "predictions_source.csv", newline="") as handle:
        scored = {row["id"]: row for row in csv.DictReader(handle)}
    assert float(scored[rows[0]["material_id"]]["target"]) == -0.05 and float(scored[rows[0]["material_id"]]["prediction"]) >= 0.0
