"""Bad input: bad CSV rows are skipped with their reasons; a missing target or an empty data.limit is a clear error."""

from __future__ import annotations

import csv
import json

import pytest
from pymatgen.core import Lattice, Structure

from conftest import cif_text
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.features import MAX_Z, cgcnn_feature_table, supported_elements
from crystal_train.training.run import train

TARGET = "formation_energy_per_atom"
SMALL_TRAIN = [
    "data.split.fractions=[0.6,0.2,0.2]",
    "trainer.max_epochs=2",
    "trainer.batch_size=2",
    "model.atom_fea_len=8",
    "model.n_conv=1",
    "model.h_fea_len=8",
    "seed=0",
]


def _bad_rows(duplicate_of: str) -> tuple[list[dict], dict[str, str]]:
    """Rows that must each be skipped, and the reason expected for each id."""
    # every element up to Z=100 has CGCNN features, so nobelium (Z=102) is the element outside the table
    assert 102 not in supported_elements(cgcnn_feature_table()) and MAX_Z < 102
    disordered = Structure(Lattice.cubic(5.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nobelium = Structure(Lattice.cubic(4.0), ["No", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    good_cif = cif_text(Structure(Lattice.cubic(4.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    rows = [
        {"material_id": "bad-cif", TARGET: -1.0, "cif": "data_broken\n_cell_length_a 4.0\nthis is not a cif\n"},
        {"material_id": "bad-label", TARGET: "NaN", "cif": good_cif},
        {"material_id": "bad-occupancy", TARGET: -1.0, "cif": cif_text(disordered)},
        {"material_id": duplicate_of, TARGET: 99.0, "cif": good_cif},
        {"material_id": "bad-element", TARGET: -1.0, "cif": cif_text(nobelium)},
    ]
    reasons = {
        "bad-cif": "malformed CIF",
        "bad-label": "not a finite number",
        "bad-occupancy": "partial occupancy",
        duplicate_of: "duplicate id",
        "bad-element": "element outside the feature table: No",
    }
    return rows, reasons


def test_training_skips_bad_rows_and_uses_only_good_ones(compose_train_cfg, write_csv, good_rows, tmp_path):
    good_ids = [row["material_id"] for row in good_rows]
    bad, reasons = _bad_rows(duplicate_of=good_ids[0])
    rows = good_rows[:2] + bad[:2] + good_rows[2:] + bad[2:]
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", *SMALL_TRAIN], tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    train(cfg, run_dir)

    used = json.loads((run_dir / "split.json").read_text())
    assert sorted(sum(used.values(), [])) == sorted(good_ids)
    assert all(len(used[name]) >= 1 for name in ("train", "val", "test"))
    with open(run_dir / "skipped.csv", newline="") as handle:
        skipped = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in skipped) == sorted(reasons)
    for row in skipped:
        assert reasons[row["id"]] in row["reason"], row
    assert (run_dir / "metrics.json").is_file()

    # the first of the duplicate ids is the one kept
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    assert data.store.targets[data.store.ids.index(good_ids[0])] == good_rows[0][TARGET]


def test_only_bad_rows_stop_with_clear_error(compose_train_cfg, write_csv, tmp_path):
    bad, _ = _bad_rows(duplicate_of="bad-cif")
    cfg = compose_train_cfg([f"data.snapshot={write_csv(bad)}", *SMALL_TRAIN], tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ValueError, match="no valid crystals"):
        train(cfg, run_dir)


def test_a_target_the_data_lacks_is_a_clear_error(compose_train_cfg, write_csv, good_rows, tmp_path):
    demo = compose_train_cfg(["data=demo", "data.num_crystals=4", "data.target=band_gap"], tmp_path)
    with pytest.raises(ValueError, match="data.target=band_gap, but the built-in demo dataset has only formation_energy_per_atom"):
        prepare_data(demo.data, graph_settings(demo.graph))
    csv_source = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", "data.target=bulk_modulus"], tmp_path)
    with pytest.raises(ValueError, match="bulk_modulus"):
        prepare_data(csv_source.data, graph_settings(csv_source.graph))


def test_a_limit_below_one_crystal_is_a_clear_error(compose_train_cfg, tmp_path):
    cfg = compose_train_cfg(["data=demo", "data.num_crystals=4", "data.limit=0"], tmp_path)
    with pytest.raises(ValueError, match="data.limit=0: give a positive number of crystals"):
        prepare_data(cfg.data, graph_settings(cfg.graph))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("graph.max_neighbors=0", r"graph.max_neighbors=0: give at least 1, or null"),
        ("graph.cutoff=0", r"graph.cutoff=0.0: give a positive distance"),
        ("graph.cutoff=-8", r"graph.cutoff=-8.0: give a positive distance"),
    ],
)
def test_graph_settings_that_would_keep_no_edges_are_refused(setting, message, compose_train_cfg, tmp_path):
    cfg = compose_train_cfg(["data=demo", "data.num_crystals=4", setting], tmp_path)
    with pytest.raises(ValueError, match=message):
        graph_settings(cfg.graph)
