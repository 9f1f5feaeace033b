"""Tests for reading every dataset layout into raw items and parsing them with to_crystal."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATASETS
from pymatgen.core import Lattice, Structure

import crystal_train.data.crystal as crystal_module
from crystal_train.data.crystal import SkippedItem, cell_thickness, coinciding_sites
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.materials_project import SNAPSHOT_FORMAT, SNAPSHOT_VERSION
from crystal_train.data.sources import RawItem, content_fingerprint, load_source, load_structure_table, to_crystal


def _structures() -> dict[str, Structure]:
    return {
        "mp-1": Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "mp-2": Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "mp-3": Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]),
    }


TARGETS = {"mp-1": -2.1, "mp-2": 0.0, "mp-3": -1.8}
SPLIT = {"mp-1": "train", "mp-2": "val", "mp-3": "test"}


def _assert_matches(crystal, structure: Structure) -> None:
    assert crystal.numbers.tolist() == list(structure.atomic_numbers)
    lattice = Lattice(crystal.lattice)
    np.testing.assert_allclose(lattice.abc, structure.lattice.abc, atol=1e-4)
    np.testing.assert_allclose(lattice.angles, structure.lattice.angles, atol=1e-3)
    delta = crystal.frac_coords - structure.frac_coords
    np.testing.assert_allclose(delta - np.round(delta), 0, atol=1e-5)


def _frame(ids=("mp-1", "mp-2", "mp-3")) -> pd.DataFrame:
    structures = _structures()
    return pd.DataFrame(
        {
            "material_id": list(ids),
            "split": [SPLIT[i] for i in ids],
            "formation_energy_per_atom": [TARGETS[i] for i in ids],
            "formula": ["NaN"] * len(ids),  # sodium nitride's formula must not read as missing
            "cif": [structures[i].to(fmt="cif") for i in ids],
        }
    )


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz", "data.csv.xz"])
def test_csv_layout(tmp_path, name):
    path = tmp_path / name
    _frame().to_csv(path, index=False)
    data = load_source(path, "formation_energy_per_atom")
    assert data.layout == "csv" and data.target == "formation_energy_per_atom" and data.metadata == {}
    assert data.skipped == []
    assert [(i.id, i.target, i.split) for i in data.items] == [(k, TARGETS[k], SPLIT[k]) for k in TARGETS]
    crystal = to_crystal(data.items[2])
    _assert_matches(crystal, _structures()["mp-3"])
    assert (crystal.id, crystal.target, crystal.split) == ("mp-3", -1.8, "test")


def test_csv_bad_labels_duplicates_and_empty_cif_are_skipped(tmp_path):
    cif = _structures()["mp-1"].to(fmt="cif")
    rows = [
        ("a", "1.5", cif),
        ("b", "NaN", cif),
        ("c", "", cif),
        ("d", "abc", cif),
        ("e", "inf", cif),
        ("a", "2.5", cif),
        ("b", "2.0", cif),
        ("f", "3.0", ""),
        ("", "4.0", cif),
    ]
    path = tmp_path / "data.csv"
    pd.DataFrame(rows, columns=["id", "band_gap", "cif"]).to_csv(path, index=False)
    data = load_source(path, "band_gap")
    assert [(i.id, i.target, i.split) for i in data.items] == [("a", 1.5, None)]
    assert data.skipped == [
        ("b", "invalid label 'NaN' (not a finite number)"),
        ("c", "missing label"),
        ("d", "invalid label 'abc' (not a finite number)"),
        ("e", "invalid label 'inf' (not a finite number)"),
        ("a", "duplicate id (only its first row is read, even if that row was skipped)"),
        ("b", "duplicate id (only its first row is read, even if that row was skipped)"),
        ("f", "empty CIF"),
        ("data.csv row 9", "missing id"),
    ]


def test_csv_missing_columns_name_the_column_and_file(tmp_path):
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"data\.csv: target column 'band_gap' not found \(data.target=COLUMN names the column to use\); available columns: material_id, split"):
        load_source(path, "band_gap")
    with pytest.raises(ValueError, match=r"data\.csv: data\.id_column .mpid. not found"):
        load_source(path, "formation_energy_per_atom", id_column="mpid")
    _frame().drop(columns=["cif"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"data\.csv: no structure/CIF column \(looked for cif, structure, cif_text"):
        load_source(path, "formation_energy_per_atom")
    _frame().drop(columns=["material_id"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"no id column .*available columns: split, formation_energy_per_atom"):
        load_source(path, "formation_energy_per_atom")


def test_csv_explicit_columns(tmp_path):
    path = tmp_path / "data.csv"
    _frame().rename(columns={"material_id": "key", "cif": "text"}).to_csv(path, index=False)
    data = load_source(path, "formation_energy_per_atom", id_column="key", cif_column="text")
    assert [i.id for i in data.items] == ["mp-1", "mp-2", "mp-3"]
    _assert_matches(to_crystal(data.items[0]), _structures()["mp-1"])


def test_csv_bad_split_value(tmp_path):
    path = tmp_path / "data.csv"
    frame = _frame()
    frame.loc[1, "split"] = "valid"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"data\.csv: column 'split' has values 'valid' \(row 2\); expected only train, val, test"):
        load_source(path, "formation_energy_per_atom")
    frame.loc[2, "split"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column 'split' has values '', 'valid' \(rows 2, 3\); expected"):
        load_source(path, "formation_energy_per_atom")


def test_split_folder(tmp_path):
    for split, ids in {"train": ["mp-1", "mp-2"], "val": ["mp-3"], "test": ["mp-1"]}.items():
        _frame(ids).drop(columns=["split"]).to_csv(tmp_path / f"{split}.csv", index=False)
    data = load_source(tmp_path, "formation_energy_per_atom")
    assert data.layout == "split_folder"
    assert [(i.id, i.split) for i in data.items] == [("mp-1", "train"), ("mp-2", "train"), ("mp-3", "val")]
    assert data.skipped == [("mp-1", "duplicate id (only its first row is read, even if that row was skipped)")]
    _assert_matches(to_crystal(data.items[1]), _structures()["mp-2"])
    os.remove(tmp_path / "val.csv")
    with pytest.raises(FileNotFoundError, match="is missing val.csv"):
        load_source(tmp_path, "formation_energy_per_atom")


def test_split_folder_file_whose_split_column_disagrees_with_its_name_is_an_error(tmp_path):
    for split, ids in {"train": ["mp-1"], "val": ["mp-2"], "test": ["mp-3"]}.items():
        frame = _frame(ids)
        frame["split"] = split
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    assert [i.split for i in load_source(tmp_path, "formation_energy_per_atom").items] == ["train", "val", "test"]
    frame = _frame(["mp-3"])
    frame["split"] = "train"
    frame.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ValueError, match=r"test\.csv: its name makes every row 'test', but its split column says train"):
        load_source(tmp_path, "formation_energy_per_atom")


def _cgcnn_folder(folder: Path) -> Path:
    folder.mkdir()
    for item_id, structure in _structures().items():
        (folder / f"{item_id}.cif").write_text(structure.to(fmt="cif"))
    (folder / "mp-4.cif").write_text("")
    (folder / "id_prop.csv").write_text("mp-1,-2.1\nmp-2,0.0\nmp-3,-1.8\nmp-4,1.0\nmp-5,2.0\nmp-6,\n")
    return folder


def test_cgcnn_folder(tmp_path):
    data = load_source(_cgcnn_folder(tmp_path / "cgcnn"), "formation_energy_per_atom")
    assert data.layout == "cgcnn_folder" and data.target == "formation_energy_per_atom"
    assert [(i.id, i.target, i.split) for i in data.items] == [("mp-1", -2.1, None), ("mp-2", 0.0, None), ("mp-3", -1.8, None)]
    assert data.skipped == [("mp-4", "empty file mp-4.cif"), ("mp-5", "missing file mp-5.cif"), ("mp-6", "missing label")]
    parse, item = pickle.loads(pickle.dumps((to_crystal, data.items[0])))  # as sent to worker processes
    crystal = parse(item)
    _assert_matches(crystal, _structures()["mp-1"])
    assert (crystal.id, crystal.target) == ("mp-1", -2.1)


def test_a_text_column_as_target_is_one_error_naming_it_not_a_skip_per_row(tmp_path, write_csv, good_rows):
    path = write_csv([{**row, "formula": f"X{n}"} for n, row in enumerate(good_rows)])
    with pytest.raises(ValueError, match=r"data\.csv: target column 'formula' holds no numbers \(e\.g\. 'X0'\): the target must be a numeric column"):
        load_source(path, "formula")
    some_bad = write_csv([{**row, "formation_energy_per_atom": "n/a" if n == 0 else row["formation_energy_per_atom"]} for n, row in enumerate(good_rows)], "some.csv")
    data = load_source(some_bad, "formation_energy_per_atom")
    assert len(data.items) == len(good_rows) - 1 and data.skipped[0][1].startswith("invalid label 'n/a'")


@pytest.mark.parametrize(("units", "shown"), [(None, ""), ("GPa", "GPa")])
def test_a_cgcnn_folders_unnamed_labels_are_called_target_not_the_configs_quantity(compose_train_cfg, tmp_path, units, shown):
    """id_prop.csv says nothing of what its numbers are: reports must not call them formation energies in eV/atom."""
    folder = _cgcnn_folder(tmp_path / "cgcnn")
    cfg = compose_train_cfg(["data=mp_formation", f"data.snapshot={folder}", f"data.units={units or 'null'}"], tmp_path)
    data = prepare_data(cfg.data, graph_settings(cfg.graph), progress=False)
    assert (data.target, data.units) == ("target", shown)


def test_cgcnn_file_deleted_after_loading_is_skipped(tmp_path):
    data = load_source(_cgcnn_folder(tmp_path / "cgcnn"), "y")
    os.remove(tmp_path / "cgcnn" / "mp-2.cif")
    with pytest.raises(SkippedItem, match="missing file mp-2.cif"):
        to_crystal(data.items[1])


@pytest.mark.parametrize("name", ["data.json", "data.json.gz"])
def test_json_list(tmp_path, name):
    structures = _structures()
    records = [
        {"material_id": k, "structure": s.as_dict(), "e_form": TARGETS[k], "split": SPLIT[k]}
        for k, s in structures.items()
    ]
    records.append({"material_id": "mp-9", "structure": None, "e_form": 1.0, "split": "train"})
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt") as handle:
        json.dump(records, handle)
    data = load_source(path, "e_form")
    assert data.layout == "json"
    assert [(i.id, i.target, i.split) for i in data.items] == [(k, TARGETS[k], SPLIT[k]) for k in TARGETS]
    assert data.skipped == [("mp-9", "missing structure")]
    _assert_matches(to_crystal(data.items[2]), structures["mp-3"])


def test_json_pandas_split_form_uses_the_index_as_id(tmp_path):
    structures = _structures()
    table = {
        "index": ["mb-mp-e_form-000001", "mb-mp-e_form-000002", "mb-mp-e_form-000003"],
        "columns": ["structure", "e_form"],
        "data": [[s.as_dict(), TARGETS[k]] for k, s in structures.items()],
    }
    path = tmp_path / "matbench_mp_e_form.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(table, handle)
    data = load_source(path, "e_form")
    assert [(i.id, i.target, i.split) for i in data.items] == [
        ("mb-mp-e_form-000001", -2.1, None),
        ("mb-mp-e_form-000002", 0.0, None),
        ("mb-mp-e_form-000003", -1.8, None),
    ]
    _assert_matches(to_crystal(data.items[1]), structures["mp-2"])
    with pytest.raises(ValueError, match=r"target column 'gap' not found \(data.target=COLUMN names the column to use\); available columns: id, structure, e_form"):
        load_source(path, "gap")


def test_json_integer_ids_stay_integers_when_one_record_has_no_id(tmp_path):
    structure = _structures()["mp-1"].as_dict()
    records = [
        {"id": 7, "structure": structure, "y": 1.0},
        {"id": 12345678901234567, "structure": structure, "y": 2.0},
        {"id": 12345678901234568, "structure": structure, "y": 3.0},  # the same as the previous one as a float
        {"id": None, "structure": structure, "y": 4.0},
    ]
    (tmp_path / "ids.json").write_text(json.dumps(records))
    data = load_source(tmp_path / "ids.json", "y")
    assert [(i.id, i.target) for i in data.items] == [("7", 1.0), ("12345678901234567", 2.0), ("12345678901234568", 3.0)]
    assert data.skipped == [("ids.json row 4", "missing id")]


@pytest.mark.parametrize("labels", ["mp-1,-2.1\nmp-2,0.0,extra\n", "", b"\xff\xfe,1\n"])
def test_an_unreadable_cgcnn_id_prop_csv_is_named_in_the_error(tmp_path, labels):
    folder = _cgcnn_folder(tmp_path / "cgcnn")
    (folder / "id_prop.csv").write_bytes(labels if isinstance(labels, bytes) else labels.encode())
    with pytest.raises(ValueError, match=r"cannot read CSV .*cgcnn/id_prop.csv: "):
        load_source(folder, "y")


def _write_snapshot(path: Path) -> None:
    nacl, si, _ = _structures().values()
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "query": {"deprecated": False},
        "targets": ["band_gap", "formation_energy_per_atom"],
        "database_version": "2025.09.25",
        "mp_api_version": "0.46.5",
        "created_utc": "2025-10-01T00:00:00+00:00",
        "records": [
            {
                "id": "mp-1",
                "structure": {"lattice": nacl.lattice.matrix.tolist(), "numbers": [11, 17], "frac_coords": nacl.frac_coords.tolist()},
                "targets": {"band_gap": 5.0, "formation_energy_per_atom": -2.1},
            },
            {"id": "mp-2", "structure": si.as_dict(), "targets": {"band_gap": 0.6, "formation_energy_per_atom": 0.0}},
            {"id": "mp-3", "structure": si.as_dict(), "targets": {"band_gap": None, "formation_energy_per_atom": 0.1}},
        ],
    }
    with gzip.open(path, "wt") as handle:
        json.dump(snapshot, handle)


def _atoms(item_id: str, **info):
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(_structures()[item_id])
    atoms.info.update(info)
    return atoms


@pytest.mark.parametrize("name", ["data.extxyz", "data.xyz.gz", "DATA.XYZ.GZ", "data.extxyz.bz2", "data.xyz.xz"])
def test_extended_xyz_frames_are_rows_with_their_key_value_pairs(tmp_path, name):
    from ase import Atoms
    from ase.io import write

    frames = [_atoms(item_id, material_id=item_id, formation_energy_per_atom=TARGETS[item_id], split=SPLIT[item_id]) for item_id in TARGETS]
    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])  # no cell: not a crystal
    molecule.info.update(material_id="h2", formation_energy_per_atom=0.0, split="train")
    unlabelled = _atoms("mp-2", material_id="mp-4", split="train")
    path = tmp_path / name
    write(path.with_name("plain.extxyz"), [*frames, molecule, unlabelled], format="extxyz")
    packed = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(name.lower()).suffix, open)
    with packed(path, "wb") as handle:  # compressed here: ASE would not compress a name in capitals
        handle.write(path.with_name("plain.extxyz").read_bytes())
    data = load_source(path, "formation_energy_per_atom")
    assert data.layout == "extxyz" and data.skipped == [("mp-4", "missing label")]
    assert [(i.id, i.target, i.split) for i in data.items] == [(k, TARGETS[k], SPLIT[k]) for k in TARGETS] + [("h2", 0.0, "train")]
    for item, structure in zip(data.items, _structures().values()):
        _assert_matches(to_crystal(item), structure)
    with pytest.raises(SkippedItem, match=r"not periodic along every axis"):
        to_crystal(data.items[3])
    with pytest.raises(ValueError, match=f"{name}: target 'band_gap' is no key of its structures .*; keys: material_id, formation_energy_per_atom, split$"):
        load_source(path, "band_gap")
    with pytest.raises(ValueError, match=f"{name}: data.id_column 'materal_id' is no key of its structures; keys: material_id, "):
        load_source(path, "formation_energy_per_atom", id_column="materal_id")  # a typo: not every frame quietly renamed data#N
    assert [item.id for item in load_structure_table(path).items] == [*TARGETS, "h2", "mp-4"]  # crystal-predict's reading: every frame


def test_training_data_from_extended_xyz_has_the_graphs_of_the_same_crystals_from_cifs(compose_train_cfg, tmp_path):
    from ase.io import write

    frames = [_atoms(item_id, material_id=item_id, formation_energy_per_atom=TARGETS[item_id], split=SPLIT[item_id]) for item_id in TARGETS]
    write(tmp_path / "data.extxyz", frames, format="extxyz")
    _frame().to_csv(tmp_path / "data.csv", index=False)
    stores = [
        prepare_data(cfg.data, graph_settings(cfg.graph), progress=False).store
        for cfg in (compose_train_cfg(["data=mp_formation", f"data.snapshot={tmp_path / name}"], tmp_path) for name in ("data.extxyz", "data.csv"))
    ]
    from_xyz, from_cifs = stores
    assert from_xyz.ids == from_cifs.ids == list(TARGETS) and from_xyz.targets.tolist() == from_cifs.targets.tolist()
    for index in range(3):
        edges = [slice(*store.edge_ptr[index : index + 2]) for store in stores]
        np.testing.assert_allclose(np.sort(from_xyz.distances[edges[0]]), np.sort(from_cifs.distances[edges[1]]), atol=1e-4)


def test_extended_xyz_frames_without_ids_are_numbered_and_a_calculators_total_energy_is_refused(tmp_path, compose_train_cfg):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for item_id in TARGETS:
        atoms = _atoms(item_id)
        atoms.calc = SinglePointCalculator(atoms, energy=-4.0 * len(atoms), free_energy=-4.1 * len(atoms), forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    supercell = frames[0].repeat((2, 1, 1))  # the same crystal, twice the atoms and twice the total energy
    supercell.calc = SinglePointCalculator(supercell, energy=-4.0 * len(supercell))
    path = tmp_path / "relaxed.extxyz.gz"
    write(path, [*frames, supercell], format="extxyz")
    data = load_source(path, "energy_per_atom")
    assert [(item.id, item.target) for item in data.items] == [(f"relaxed#{index}", -4.0) for index in range(4)]
    frames[1].info["name"] = "nacl-relaxed"  # an id key in some frames only: the others keep their numbers
    write(path, frames, format="extxyz")
    assert [item.id for item in load_source(path, "energy_per_atom").items] == ["relaxed#0", "nacl-relaxed", "relaxed#2"]
    assert [item.id for item in load_structure_table(path, default_prefix="run1/relaxed").items][0] == "run1/relaxed#0"
    with pytest.raises(ValueError, match=r"relaxed.extxyz.gz: energy is each cell's total .* Train on data.target=energy_per_atom"):
        load_source(path, "energy")
    for target in ("energy_per_atom", "free_energy_per_atom"):  # ASE's energies are in eV
        cfg = compose_train_cfg([f"data.snapshot={path}", f"data.target={target}"], tmp_path)
        assert prepare_data(cfg.data, graph_settings(cfg.graph), progress=False).units == "eV/atom"
    broken = tmp_path / "broken.xyz"
    broken.write_text("two\natoms\n")
    with pytest.raises(ValueError, match=r"cannot read extended XYZ from .*broken.xyz: XYZError"):
        load_structure_table(broken)


def test_an_ase_databases_rows_are_read_as_extended_xyz_frames_are(tmp_path):
    import sqlite3

    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect

    path = tmp_path / "screening.db"
    with connect(path) as database:
        for item_id in TARGETS:
            database.write(_atoms(item_id), material_id=item_id, formation_energy_per_atom=TARGETS[item_id], split=SPLIT[item_id])
        database.write(_atoms("mp-2"), material_id="mp-4", split="train")  # no label
    data = load_source(path, "formation_energy_per_atom")
    assert data.layout == "ase_db" and data.skipped == [("mp-4", "missing label")]
    assert [(i.id, i.target, i.split) for i in data.items] == [(k, TARGETS[k], SPLIT[k]) for k in TARGETS]
    for item, structure in zip(data.items, _structures().values()):
        _assert_matches(to_crystal(item), structure)
    assert [item.id for item in load_structure_table(path).items] == [*TARGETS, "mp-4"]

    unnamed = tmp_path / "relaxed.db"  # no id key: rows by their database id, from 1; a stored energy per atom
    with connect(unnamed) as database:
        for item_id in TARGETS:
            atoms = _atoms(item_id)
            atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * len(atoms))
            database.write(atoms)
    assert [(item.id, item.target) for item in load_source(unnamed, "energy_per_atom").items] == [(f"relaxed#{n}", -3.0) for n in (1, 2, 3)]

    other = tmp_path / "other.db"  # an SQLite file of something else
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE samples (name TEXT)")
    with pytest.raises(ValueError, match=r"cannot read an ASE database from .*other.db: ValueError: an SQLite file without ASE's 'systems' table"):
        load_source(other, "y")
    with sqlite3.connect(other) as connection:  # left as it was
        assert [name for (name,) in connection.execute("SELECT name FROM sqlite_master")] == ["samples"]
    with connect(tmp_path / "empty.db") as database:
        assert database.count() == 0
    with pytest.raises(ValueError, match=r"empty.db holds no structures"):
        load_structure_table(tmp_path / "empty.db")
    (tmp_path / "notes.db").write_text("not SQLite")
    with pytest.raises(ValueError, match=r"cannot read an ASE database from .*notes.db: DatabaseError"):
        load_source(tmp_path / "notes.db", "y")


def test_a_structure_table_keeps_every_row_with_an_id_and_a_structure_whatever_its_labels(tmp_path):
    """crystal-predict's reading: labels, splits and their absence do not matter; ids and structures do."""
    nacl, si, cu = _structures().values()
    rows = [
        {"material_id": "a", "cif": nacl.to(fmt="cif"), "band_gap": "", "split": "holdout"},  # no label, a split no training reads
        {"material_id": "b", "cif": si.to(fmt="cif"), "band_gap": "n/a", "split": ""},
        {"material_id": "", "cif": cu.to(fmt="cif"), "band_gap": 1.0, "split": "test"},
        {"material_id": "c", "cif": "", "band_gap": 1.0, "split": "test"},
    ]
    path = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = load_structure_table(path)
    assert [(item.id, math.isnan(item.target), item.split) for item in table.items] == [("a", True, None), ("b", True, None)]
    assert table.skipped == [("table.csv row 3", "missing id"), ("c", "empty CIF")]
    _assert_matches(to_crystal(table.items[1]), si)
    with pytest.raises(ValueError, match="table.csv: data.cif_column 'structure' not found; available columns: material_id, cif, band_gap, split"):
        load_structure_table(path, cif_column="structure")

    snapshot = tmp_path / "mp-snapshot.json.gz"  # a snapshot's records, with or without the targets it holds
    _write_snapshot(snapshot)
    assert [item.id for item in load_structure_table(snapshot).items] == ["mp-1", "mp-2", "mp-3"]


def test_snapshot_layout(tmp_path):
    path = tmp_path / "mp-snapshot.json.gz"
    _write_snapshot(path)
    data = load_source(path, "band_gap")
    assert data.layout == "snapshot"
    assert [(i.id, i.target, i.split) for i in data.items] == [("mp-1", 5.0, None), ("mp-2", 0.6, None)]
    assert data.skipped == [("mp-3", "missing label")]
    assert data.metadata["database_version"] == "2025.09.25"
    assert data.metadata["query"] == {"deprecated": False}
    assert "records" not in data.metadata
    nacl, si, _ = _structures().values()
    _assert_matches(to_crystal(data.items[0]), nacl)
    _assert_matches(to_crystal(data.items[1]), si)
    with pytest.raises(ValueError, match="target 'volume' is not in this snapshot; available targets: band_gap, formation_energy_per_atom"):
        load_source(path, "volume")


def test_to_crystal_rejects_bad_structures():
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(SkippedItem, match="partial occupancy"):
        to_crystal(RawItem("x", 1.0, None, structure=disordered.as_dict()))
    bad_arrays = {"lattice": [[1, 0, 0], [0, 1, 0]], "numbers": [1], "frac_coords": [[0, 0, 0]]}
    with pytest.raises(SkippedItem, match="malformed structure arrays"):
        to_crystal(RawItem("x", 1.0, None, structure=bad_arrays))
    with pytest.raises(SkippedItem, match="malformed structure"):
        to_crystal(RawItem("x", 1.0, None, structure={"sites": "nonsense"}))
    singular = {"lattice": [[3, 0, 0], [0, 4, 0], [3, 4, 0]], "numbers": [1], "frac_coords": [[0, 0, 0]]}
    with pytest.raises(SkippedItem, match="degenerate cell: 0 Å thick"):
        to_crystal(RawItem("x", 1.0, None, structure=singular))
    flat = {"lattice": [[5, 0, 0], [0, 5, 0], [0, 0, 0.005]], "numbers": [1], "frac_coords": [[0, 0, 0]]}
    with pytest.raises(SkippedItem, match="degenerate cell: 0.005 Å thick"):
        to_crystal(RawItem("x", 1.0, None, structure=flat))
    stacked = {"lattice": np.diag([5.0, 5.0, 5.0]).tolist(), "numbers": [3, 8, 3], "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5], [1 - 1e-6, 0, 0]]}
    with pytest.raises(SkippedItem, match=r"two sites at one position: sites 0 and 2, counting from 0"):
        to_crystal(RawItem("x", 1.0, None, structure=stacked))
    for lattice, coords in (([[5, 0, 0], [0, 5, 0], [0, 0, float("inf")]], [0, 0, 0]), (np.eye(3).tolist(), [0, float("nan"), 0])):
        with pytest.raises(SkippedItem, match=r"the cell or the atom positions hold a non-finite number \(nan or inf\)"):
            to_crystal(RawItem("x", 1.0, None, structure={"lattice": lattice, "numbers": [1], "frac_coords": [coords]}))
    left_handed = {"lattice": [[5, 0, 0], [0, 5, 0], [0, 0, -5]], "numbers": [3, 8], "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]]}
    assert to_crystal(RawItem("x", 1.0, None, structure=left_handed)).num_atoms == 2
    with pytest.raises(SkippedItem, match="no structure"):
        to_crystal(RawItem("x", 1.0, None))
    with pytest.raises(SkippedItem, match="malformed CIF"):
        to_crystal(RawItem("x", 1.0, None, cif_text="data_x\n_not a cif\n"))


def test_cell_thickness_is_the_smallest_spacing_of_the_cell_faces():
    lattice = Lattice.from_parameters(3.0, 4.5, 7.0, 70.0, 100.0, 115.0)
    spacings = [lattice.d_hkl(hkl) for hkl in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    assert cell_thickness(lattice.matrix) == pytest.approx(min(spacings), rel=1e-12)
    assert cell_thickness(-lattice.matrix) == pytest.approx(min(spacings), rel=1e-12)


def test_fingerprint_tracks_content_target_and_columns_not_folder_or_mtime(tmp_path):
    """content_fingerprint is the graph cache's key for a file source."""
    first, other_folder = tmp_path / "data.csv", tmp_path / "elsewhere" / "data.csv"
    other_folder.parent.mkdir()
    _frame().to_csv(first, index=False)
    _frame().to_csv(other_folder, index=False)
    base = content_fingerprint(first, "formation_energy_per_atom")
    assert len(base) == 64
    os.utime(first, (1, 1))
    assert content_fingerprint(first, "formation_energy_per_atom") == base
    assert content_fingerprint(other_folder, "formation_energy_per_atom") == base  # same name and bytes, other folder
    assert content_fingerprint(first, "formation_energy_per_atom", id_column="material_id") != base
    assert content_fingerprint(first, "band_gap") != base
    frame = _frame()
    frame.loc[0, "formation_energy_per_atom"] = -2.2
    frame.to_csv(other_folder, index=False)
    assert content_fingerprint(other_folder, "formation_energy_per_atom") != base


def test_folder_fingerprint_tracks_every_file_directly_in_it(tmp_path):
    folder = _cgcnn_folder(tmp_path / "cgcnn")
    base = content_fingerprint(folder, "y")
    assert content_fingerprint(folder, "z") != base
    (folder / "mp-2.cif").write_text(_structures()["mp-3"].to(fmt="cif"))
    changed = content_fingerprint(folder, "y")
    assert changed != base
    (folder / "notes.txt").write_text("notes")  # conservative: any file may matter to the layout
    noted = content_fingerprint(folder, "y")
    assert noted != changed
    (folder / "outputs" / "2026-12-08").mkdir(parents=True)  # a run started from inside the folder, which reads none of it
    (folder / "outputs" / "2026-12-08" / "train.log").write_text("epoch 1")
    assert content_fingerprint(folder, "y") == noted
    (folder / "cifs").mkdir()  # id_prop.csv may name CIFs in a subfolder: those count
    (folder / "cifs" / "mp-7.cif").write_text(_structures()["mp-1"].to(fmt="cif"))
    (folder / "id_prop.csv").write_text((folder / "id_prop.csv").read_text() + "cifs/mp-7,0.5\n")
    named = content_fingerprint(folder, "y")
    assert [item.id for item in load_source(folder, "y").items][-1] == "cifs/mp-7"
    (folder / "cifs" / "mp-7.cif").write_text(_structures()["mp-2"].to(fmt="cif"))
    assert content_fingerprint(folder, "y") != named


def test_unknown_paths_and_layouts(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.csv does not exist; give the file or folder with data.snapshot=PATH"):
        load_source(tmp_path / "nowhere.csv", "y")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"data source nowhere.csv does not exist, looked for from {tmp_path}; give") as error:
        load_source("nowhere.csv", "y")
    assert "CRYSTAL_TRAIN_MP2018" not in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"data.snapshot=PATH \(or, for the mp2018_\* experiment overlays, with \$CRYSTAL_TRAIN_MP2018\)$"):
        load_source("../shared/datasets/mp2018_megnet/mp2018_megnet_with_structures.csv.xz", "y")
    (tmp_path / "data.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported data file .*data.parquet"):
        load_source(tmp_path / "data.parquet", "y")
    with pytest.raises(FileNotFoundError, match="neither id_prop.csv .* nor train.csv"):
        load_source(tmp_path, "y")
    (tmp_path / "data.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="data.json: expected a list of records"):
        load_source(tmp_path / "data.json", "y")


def test_shared_cgcnn_sample_regression():
    folder = SHARED_DATASETS / "cgcnn_sample" / "sample-regression"
    if not (folder / "id_prop.csv").is_file():
        pytest.skip(f"shared dataset not present at {folder}")
    data = load_source(folder, "dummy")
    assert data.layout == "cgcnn_folder" and data.skipped == []
    assert len(data.items) == 10
    assert data.items[0].id == "1000041" and data.items[0].target == 1.0
    crystal = to_crystal(data.items[0])
    assert crystal.num_atoms > 0 and math.isfinite(crystal.target)


@pytest.mark.parametrize(
    ("overrides", "units"),
    [
        (["data=mp_formation"], "eV/atom"),
        (["data=mp_gap"], "eV"),
        (["data=mp_formation", "data.target=band_gap"], "eV"),  # the target's units, not the data config's
        (["data=mp_gap", "data.target=formation_energy_per_atom", "data.target_min=null"], "eV/atom"),
        (["data=mp_formation", "data.target=gap_scan"], ""),  # an unknown column names no units ...
        (["data=mp_formation", "data.target=gap_scan", "data.units=eV"], "eV"),  # ... unless data.units does
    ],
)
def test_units_follow_the_target(overrides, units, compose_train_cfg, write_csv, good_rows, tmp_path):
    for row in good_rows:
        row["gap_scan"] = row["band_gap"] * 1.3
    cfg = compose_train_cfg([*overrides, f"data.snapshot={write_csv(good_rows)}"], tmp_path)
    assert prepare_data(cfg.data, graph_settings(cfg.graph), progress=False).units == units


def test_a_split_column_is_read_whatever_its_case(tmp_path):
    cif = _structures()["mp-1"].to(fmt="cif")
    path = tmp_path / "data.csv"
    pd.DataFrame({"id": ["a", "b"], "y": [1.0, 2.0], "cif": [cif, cif], "Split": ["test", "train"]}).to_csv(path, index=False)
    assert [item.split for item in load_source(path, "y").items] == ["test", "train"]
    pd.DataFrame({"id": ["a"], "y": [1.0], "cif": [cif], "Split": ["test"], "SPLIT": ["train"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"several split columns \('Split', 'SPLIT'\)"):
        load_source(path, "y")


@pytest.mark.parametrize("pairs_at_once", [7, 64, 1 << 20])  # blocks of one row, of a few, all at once
def test_coinciding_sites_in_blocks_finds_the_first_pair_of_all_pairs_at_once(monkeypatch, pairs_at_once):
    monkeypatch.setattr(crystal_module, "COMPARED_PAIRS", pairs_at_once)
    rng = np.random.default_rng(0)
    coords = rng.random((40, 3))
    assert coinciding_sites(coords) is None
    coords[31] = coords[12] + 5e-5  # within the tolerance
    coords[25] = [1 - 2e-5, coords[20, 1], coords[20, 2]]  # across the cell's face
    coords[20, 0] = 1e-5
    assert coinciding_sites(coords) == (12, 31)
    coords[31] += 0.1
    assert coinciding_sites(coords) == (20, 25)


def test_the_coinciding_sites_check_of_a_large_cell_takes_little_memory():
    import tracemalloc

    coords = np.random.default_rng(1).random((4000, 3))
    tracemalloc.start()
    assert coinciding_sites(coords) is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6  # all 4000² pairs at once: 384 MB for the differences alone
