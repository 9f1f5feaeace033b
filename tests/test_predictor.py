"""crystal_train.predictor.Predictor: predictions from Python for pymatgen Structures, ASE Atoms and files."""

from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
from ase import Atoms
from config_utils import compose_config
from conftest import cif_folder, cif_text, good_structures
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

    assert list(table.columns) == ["id", "formula", "prediction", "unseen_elements", "structure_warnings", "skipped"]
    assert table["id"].tolist() == ["0", "1", "2", "3", "4"]  # positions, since not all are files
    for row, name in ((0, "mp-si"), (1, "mp-cu"), (4, "mp-nacl")):
        assert table.loc[row, "prediction"] == pytest.approx(float(expected[name]["prediction"]), abs=1e-6)  # float32, CIF-rounded coordinates
        assert table.loc[row, "unseen_elements"] == expected[name]["unseen_elements"] and table.loc[row, "skipped"] == ""
    assert min(abs(a - b) for a, b in itertools.combinations(table["prediction"].iloc[[0, 1, 4]], 2)) > 1e-4  # rows tell apart
    assert table.loc[4, "unseen_elements"] == "Na Cl"  # the demo's alloys hold neither
    assert table["formula"].tolist() == ["Si", "Cu", "", "", "NaCl"]  # reduced: four Cu atoms in mp-cu's cell
    assert all(table.loc[row, "formula"] == expected[name]["formula"] for row, name in ((0, "mp-si"), (1, "mp-cu"), (4, "mp-nacl")))
    assert math.isnan(table.loc[2, "prediction"]) and table.loc[2, "skipped"].startswith("malformed CIF")
    assert math.isnan(table.loc[3, "prediction"]) and "not periodic along every axis" in table.loc[3, "skipped"]

    files = Predictor(ckpt, device="cpu").predict([folder / "mp-si.cif", folder, folder / "mp-cu.cif"])
    assert files["id"].tolist() == ["mp-si", "cifs", "mp-cu"]  # file ids, as crystal-predict's, when all are files
    assert files["prediction"].tolist() == pytest.approx([float(expected["mp-si"]["prediction"]), math.nan, float(expected["mp-cu"]["prediction"])],
                                                         abs=1e-6, nan_ok=True)
    assert files.loc[1, "skipped"] == "cifs is a folder, not a structure file"


@pytest.mark.slow
def test_predictor_takes_one_structure_alone_cif_text_and_skips_flat_cells(demo_run):
    run_dir, _, _ = demo_run
    predictor = Predictor(run_dir / "checkpoints" / "best.pt", device="cpu")
    copper = good_structures()["mp-cu"]
    alone = predictor.predict(copper)
    assert alone["id"].tolist() == ["0"] and alone.loc[0, "skipped"] == ""
    as_text = predictor.predict(cif_text(copper))
    assert as_text.loc[0, "prediction"] == pytest.approx(alone.loc[0, "prediction"], abs=1e-6)
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[[3.6, 0, 0], [0, 3.6, 0], [0, 0, 0]], pbc=True)
    table = predictor.predict([flat, AseAtomsAdaptor.get_atoms(copper)])
    assert table.loc[0, "skipped"].startswith("degenerate cell: 0 Å thick") and math.isnan(table.loc[0, "prediction"])
    assert table.loc[1, "prediction"] == pytest.approx(alone.loc[0, "prediction"], abs=1e-6)
    empty = predictor.predict([])
    assert len(empty) == 0 and list(empty.columns) == ["id", "formula", "prediction", "unseen_elements", "structure_warnings", "skipped"]


@pytest.mark.slow
def test_predictor_with_two_checkpoints_adds_their_spread_and_takes_given_ids(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    alone = Predictor(ckpt, device="cpu")
    assert alone.target == "formation_energy_per_atom" and alone.units == "eV/atom"
    copper = good_structures()["mp-cu"]
    both = Predictor([ckpt, ckpt.with_name("last.pt")], device="cpu").predict([copper, copper * (2, 1, 1)], ids=["cu", "cu-211"])
    assert list(both.columns) == ["id", "formula", "prediction", "member_std", "unseen_elements", "structure_warnings", "skipped"]
    assert both["id"].tolist() == ["cu", "cu-211"]
    assert both.loc[0, "prediction"] == pytest.approx(both.loc[1, "prediction"], abs=1e-5)  # a supercell, the same crystal
    assert np.isfinite(both["member_std"]).all()
    last_alone = Predictor(ckpt.with_name("last.pt"), device="cpu").predict([copper])
    mean = (alone.predict([copper]).loc[0, "prediction"] + last_alone.loc[0, "prediction"]) / 2
    assert both.loc[0, "prediction"] == pytest.approx(mean, abs=1e-6)  # float32, other batches


def test_default_ids_are_file_ids_for_files_else_positions_and_given_ids_must_be_unique(tmp_path):
    copper = good_structures()["mp-cu"]
    assert _ids([tmp_path / "a" / "x.cif", str(tmp_path / "b" / "x.cif"), tmp_path / "1.cif"], None) == ["a/x.cif", "b/x.cif", "1"]
    assert _ids([copper, tmp_path / "0.cif", copper], None) == ["0", "1", "2"]
    assert _ids([copper, copper], ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 ids for 1 structures"):
        _ids([copper], ["a", "b"])
    with pytest.raises(ValueError, match="ids=a name more than one structure each"):
        _ids([copper, copper], ["a", "a"])
    with pytest.raises(ValueError, match=f"{tmp_path / 'x.cif'} listed more than once: give each file once, or ids="):
        _ids([tmp_path / "x.cif", tmp_path / "y.cif", tmp_path / "sub" / ".." / "x.cif"], None)
    assert _ids([tmp_path / "x.cif", tmp_path / "x.cif"], ["first", "second"]) == ["first", "second"]


@pytest.mark.slow
def test_crystal_features_from_crystal_predict_and_the_predictor_agree_and_skip_what_cannot_be_read(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    structures = good_structures()
    folder = cif_folder(tmp_path, {"mp-cu", "mp-si"})
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    features_csv = tmp_path / "out" / "features.csv"
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / 'p.csv'}", f"features={features_csv}", "device=cpu"]))
    with open(features_csv, newline="") as handle:
        written = {row.pop("id"): np.array([float(value) for value in row.values()]) for row in csv.DictReader(handle)}
    assert sorted(written) == ["mp-cu", "mp-si"]  # the broken CIF is in p.skipped.csv, not here
    assert all(vector.shape == (64,) for vector in written.values())  # the demo CGCNN's atom_fea_len

    table = Predictor(ckpt, device="cpu").predict([structures["mp-si"], folder / "broken.cif", structures["mp-cu"] * (1, 2, 1)], features=True)
    columns = [f"feature_{i}" for i in range(64)]
    assert list(table.columns[-64:]) == columns and table.loc[1, "skipped"].startswith("malformed CIF")
    assert table.loc[1, columns].isna().all()
    np.testing.assert_allclose(table.loc[0, columns].to_numpy(float), written["mp-si"], atol=1e-5)  # CIF-rounded coordinates
    np.testing.assert_allclose(table.loc[2, columns].to_numpy(float), written["mp-cu"], atol=1e-5)  # a supercell's are its cell's
    assert np.abs(written["mp-cu"] - written["mp-si"]).max() > 1e-3

    with pytest.raises(ValueError, match="crystal features are one model's: give one checkpoint, not 2"):
        Predictor([ckpt, ckpt.with_name("last.pt")], device="cpu").predict([structures["mp-si"]], features=True)
    both = f"ckpt=[{ckpt},{ckpt.with_name('last.pt')}]"
    with pytest.raises(ValueError, match=r"crystal features \(features=\) are one model's"):
        run_predict(compose_config("predict", [both, f"input={folder}", f"output={tmp_path / 'q.csv'}", f"features={features_csv}", "device=cpu"]))
    assert features_csv.is_file()  # refused before anything was replaced
    with pytest.raises(ValueError, match="would be written over p.csv, which crystal-predict writes too"):
        run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / 'p.csv'}", f"features={tmp_path / 'p.csv'}", "device=cpu"]))
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / 'p.csv'}", f"features={tmp_path / 'new'}/", "device=cpu"]))
    assert (tmp_path / "new" / "features.csv").read_text() == features_csv.read_text()  # a folder (ending in /) gets features.csv
