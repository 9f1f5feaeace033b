"""Training on tiny or awkward data: one-atom crystals, empty splits, too small batches."""

from __future__ import annotations

import json

import pytest
import torch
from pymatgen.core import Lattice, Structure

from conftest import cif_text, good_structures
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.training.run import train

TINY = ["trainer.max_epochs=1", "model.atom_fea_len=8", "model.n_conv=1", "model.h_fea_len=8", "seed=0"]


def _one_atom_structures() -> dict[str, Structure]:
    """Primitive one-atom cells (elemental metals are common in Materials Project)."""
    return {
        "mp-li": Structure(Lattice.from_parameters(3.0, 3.0, 3.0, 109.47, 109.47, 109.47), ["Li"], [[0, 0, 0]]),
        "mp-al": Structure(Lattice.from_parameters(2.86, 2.86, 2.86, 60, 60, 60), ["Al"], [[0, 0, 0]]),
        "mp-na": Structure(Lattice.from_parameters(3.7, 3.7, 3.7, 109.47, 109.47, 109.47), ["Na"], [[0, 0, 0]]),
    }


def _rows(structures: dict[str, Structure], split: str) -> list[dict]:
    return [
        {"material_id": item_id, "formation_energy_per_atom": -0.1 * (n + 1), "cif": cif_text(s), "split": split}
        for n, (item_id, s) in enumerate(structures.items())
    ]


def test_a_one_atom_crystal_left_alone_at_the_end_of_an_epoch_trains(compose_train_cfg, write_csv, tmp_path):
    """Three one-atom training crystals in batches of 2: the last one is folded into the first batch.

    Alone, it would be a (1, C) input to CGCNN's BatchNorm in training mode, which cannot be normalised.
    """
    others = list(good_structures().items())
    rows = _rows(_one_atom_structures(), "train") + _rows(dict(others[:1]), "val") + _rows(dict(others[1:2]), "test")
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", "trainer.batch_size=2", *TINY], tmp_path)
    train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["n"] == 3 and metrics["epochs"] == 1


def test_an_empty_validation_split_stops_the_run_naming_it(compose_train_cfg, write_csv, tmp_path):
    structures = list(good_structures().items())
    rows = _rows(dict(structures[:4]), "train") + _rows(dict(structures[4:]), "test")
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", *TINY], tmp_path)
    with pytest.raises(ValueError, match=r"the val split of .*data\.csv is empty \(train 4, val 0, test 1\)"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_empty_test_split_trains_and_says_there_is_nothing_to_score(compose_train_cfg, write_csv, tmp_path, caplog):
    structures = list(good_structures().items())
    rows = _rows(dict(structures[:4]), "train") + _rows(dict(structures[4:]), "val")
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", "trainer.batch_size=2", *TINY], tmp_path)
    with caplog.at_level("INFO"):
        train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"] == {"mae": None, "mae_stderr": None, "rmse": None, "r2": None, "n": 0} and "baseline_test_mae" not in metrics
    assert "(no test split to score)" in caplog.text and "nan" not in caplog.text


def test_cgcnn_refuses_one_crystal_batches_but_schnet_takes_them(compose_train_cfg, write_csv, good_rows, tmp_path):
    snapshot = write_csv(good_rows)
    cgcnn = compose_train_cfg([f"data.snapshot={snapshot}", "trainer.batch_size=1", "data.split.fractions=[0.6,0.2,0.2]", *TINY], tmp_path)
    with pytest.raises(ValueError, match=r"trainer\.batch_size=1 is too small for CGCNN"):
        train(cgcnn, tmp_path / "cgcnn")
    assert not (tmp_path / "cache").exists()  # refused before the graphs were built (minutes on a large source)
    schnet = compose_train_cfg(
        [f"data.snapshot={snapshot}", "model=schnet", "model.hidden_channels=8", "model.num_filters=8", "model.num_interactions=1",
         "trainer.batch_size=1", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=1", "seed=0"],
        tmp_path,
    )
    train(schnet, tmp_path / "schnet")
    assert (tmp_path / "schnet" / "metrics.json").is_file()


def test_cgcnn_refuses_a_one_crystal_training_split_naming_it(compose_train_cfg, write_csv, tmp_path):
    """One training crystal is a one-crystal batch whatever the batch size: refused up front, not left to crash
    BatchNorm ("Expected more than 1 value per channel") when that crystal has one atom."""
    structures = list(good_structures().items())
    one_atom = dict(list(_one_atom_structures().items())[:1])
    rows = _rows(one_atom, "train") + _rows(dict(structures[1:3]), "val") + _rows(dict(structures[3:]), "test")
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", "trainer.batch_size=4", *TINY], tmp_path)
    with pytest.raises(ValueError, match=r"the training split holds 1 crystal\(s\), 1 per training batch, and mp-li has a single atom: CGCNN's BatchNorm"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "split.json").exists()


def test_preparing_the_data_draws_on_no_torch_random_numbers(compose_train_cfg, write_csv, good_rows, tmp_path):
    """train() builds the model before the data (so a bad batch size fails fast); the weights stay those of a given seed."""
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", "data.split.fractions=[0.6,0.2,0.2]"], tmp_path)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    prepare_data(cfg.data, graph_settings(cfg.graph), progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_the_log_shows_the_size_of_tiny_targets_not_zeros(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    for row in good_rows:
        row["formation_energy_per_atom"] *= 1e-13  # as a diffusion coefficient in m²/s
    overrides = [f"data.snapshot={write_csv(good_rows)}", "data.units=m2/s", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=2"]
    with caplog.at_level("INFO"):
        train(compose_train_cfg(overrides, tmp_path), tmp_path / "run")
    lines = [record.getMessage() for record in caplog.records]
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    best = next(line for line in lines if line.startswith("Best epoch"))
    assert len(epoch_lines) == 2 and all("e-1" in line.split("val MAE")[1] for line in epoch_lines)
    assert "test MAE" in best and "e-1" in best.split("test MAE")[1] and "m2/s" in best
