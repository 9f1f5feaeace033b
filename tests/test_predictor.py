"""crystal_train.predictor.Predictor: predictions from Python for pymatgen Structures, ASE Atoms and files."""

from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
from ase import Atoms
from config_utils import compose_config
from conftest import cif_text, good_structures
from pymatgen.io.ase import AseAtomsAdaptor

from crystal_train.predictor import Predictor, _ids
from crystal_train.training.prediction import run_predict


@pytest.mark.slow
def test_predictor_rows_follow_the_inputs_and_match_crystal_predict(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    structures = good_structures()
    folder = tmp_path / "cifs"
    folder.mkdir()
    for name, structure in structures.items():
        (folder / f"{name}.cif").write_text(cif_text(structure))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    output = tmp_path / "preds.csv"
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={output}", "device=cpu"]))
    with open(output, newline="") as handle:
        expected = {row["id"]: row for row in csv.DictReader(handle)}

    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])  # no cell, not periodic
    inputs = [structures["mp-si"], AseAtomsAdaptor.get_atoms(structures["mp-cu"]), folder / "broken.cif", molecule, str(folder / "mp-nacl.cif")]
    table = Predictor(ckpt, device="cpu").predict(inputs)

    assert list(table.columns) == ["id", "prediction", "unseen_elements", "structure_warnings", "skipped"]
    assert table["id"].tolist() == ["0", "1", "broken", "3", "mp-nacl"]  # positions, and file ids for paths
    for row, name in ((0, "mp-si"), (1, "mp-cu"), (4, "mp-nacl")):
        assert table.loc[row, "prediction"] == pytest.approx(float(expected[name]["prediction"]), abs=1e-6)  # float32, CIF-rounded coordinates
        assert table.loc[row, "unseen_elements"] == expected[name]["unseen_elements"] and table.loc[row, "skipped"] == ""
    assert min(abs(a - b) for a, b in itertools.combinations(table["prediction"].iloc[[0, 1, 4]], 2)) > 1e-4  # rows tell apart
    assert table.loc[4, "unseen_elements"] == "Na Cl"  # the demo's alloys hold neither
    assert math.isnan(table.loc[2, "prediction"]) and table.loc[2, "skipped"].startswith("malformed CIF")
    assert math.isnan(table.loc[3, "prediction"]) and "not periodic along every axis" in table.loc[3, "skipped"]


@pytest.mark.slow
def test_predictor_with_two_checkpoints_adds_their_spread_and_takes_given_ids(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    alone = Predictor(ckpt, device="cpu")
    assert alone.target == "formation_energy_per_atom" and alone.units == "eV/atom"
    copper = good_structures()["mp-cu"]
    both = Predictor([ckpt, ckpt.with_name("last.pt")], device="cpu").predict([copper, copper * (2, 1, 1)], ids=["cu", "cu-211"])
    assert list(both.columns) == ["id", "prediction", "member_std", "unseen_elements", "structure_warnings", "skipped"]
    assert both["id"].tolist() == ["cu", "cu-211"]
    assert both.loc[0, "prediction"] == pytest.approx(both.loc[1, "prediction"], abs=1e-5)  # a supercell, the same crystal
    assert np.isfinite(both["member_std"]).all()
    last_alone = Predictor(ckpt.with_name("last.pt"), device="cpu").predict([copper])
    mean = (alone.predict([copper]).loc[0, "prediction"] + last_alone.loc[0, "prediction"]) / 2
    assert both.loc[0, "prediction"] == pytest.approx(mean, abs=1e-6)  # float32, other batches


def test_default_ids_are_positions_and_file_ids_and_must_be_unique(tmp_path):
    copper = good_structures()["mp-cu"]
    assert _ids([copper, tmp_path / "a" / "x.cif", copper], None) == ["0", "x", "2"]
    assert _ids([copper, copper], ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 ids for 1 structures"):
        _ids([copper], ["a", "b"])
    with pytest.raises(ValueError, match="ids 0 are given to more than one structure"):
        _ids([copper, tmp_path / "0.cif"], None)
