"""What reports say of each crystal's composition: errors by element, and reduced formulas."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from pymatgen.core import Element

from graph_utils import random_crystals
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.store import build_store
from crystal_train.training.breakdown import element_breakdown, write_element_breakdown
from crystal_train.training.metrics import Normalizer
from crystal_train.training.tasks import ClassProbability


@pytest.fixture(scope="module")
def crystals_and_store():
    crystals = random_crystals(40, seed=5)  # Li, O, Si and Fe, one to four atoms each; crystal i has target i
    return crystals, build_store(crystals, lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)


def test_each_element_is_scored_on_the_crystals_that_hold_it_each_counted_once(crystals_and_store):
    crystals, store = crystals_and_store
    scored = np.arange(3, 40, 2)  # a split: every other crystal from the fourth
    predictions = np.random.default_rng(0).normal(store.targets[scored], 2.0)
    rows = element_breakdown(store, scored, predictions, Normalizer(0.0, 1.0))

    # the same from the crystals themselves, by a loop over them
    by_symbol = {}
    for position, index in enumerate(scored):
        for z in set(crystals[index].numbers.tolist()):
            by_symbol.setdefault(Element.from_Z(z).symbol, []).append(position)
    assert [row["element"] for row in rows] == sorted(by_symbol, key=lambda symbol: Element(symbol).Z)
    for row in rows:
        holding = by_symbol[row["element"]]
        errors = predictions[holding] - np.array([crystals[scored[p]].target for p in holding])
        assert row["z"] == Element(row["element"]).Z and row["n"] == len(holding)
        assert row["mae"] == pytest.approx(np.abs(errors).mean()) and row["rmse"] == pytest.approx(np.sqrt((errors**2).mean()))
    assert sum(row["n"] for row in rows) > scored.size  # crystals of several elements count for each


def test_n_train_counts_the_training_crystals_holding_each_element_and_zero_for_one_they_lacked(crystals_and_store, tmp_path):
    crystals, store = crystals_and_store
    training = np.array([i for i, crystal in enumerate(crystals) if 26 not in crystal.numbers])  # no iron in training
    counts = store.element_counts(training)
    for z in (3, 8, 14):
        assert counts[z] == sum(z in crystals[i].numbers for i in training)
    assert 26 not in counts

    scored = np.arange(40)
    rows = element_breakdown(store, scored, store.targets[scored], Normalizer(0.0, 1.0), training_counts=counts)
    assert {row["element"]: row["n_train"] for row in rows} == {"Li": counts[3], "O": counts[8], "Si": counts[14], "Fe": 0}
    path = tmp_path / "errors_by_element_test.csv"
    write_element_breakdown(path, rows, Normalizer(0.0, 1.0))
    with open(path, newline="") as handle:
        assert {row["element"]: row["n_train"] for row in csv.DictReader(handle)}["Fe"] == "0"


def test_a_classifiers_breakdown_has_its_scores_and_the_file_leaves_undefined_ones_empty(crystals_and_store, tmp_path):
    crystals, _ = crystals_and_store
    labelled = [replace(crystal, target=float(i % 2)) for i, crystal in enumerate(crystals[:3])]  # classes 0, 1, 0
    store = build_store(labelled, lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)
    rows = element_breakdown(store, np.arange(3), np.array([0.2, 0.9, 0.6]), ClassProbability(0.5))
    assert {"accuracy", "roc_auc", "log_loss", "n"} <= rows[0].keys() and "mae" not in rows[0]

    path = tmp_path / "errors_by_element_test.csv"
    write_element_breakdown(path, rows, ClassProbability(0.5))
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["element"] for row in written] == [row["element"] for row in rows]
    assert list(written[0])[:5] == ["element", "z", "n", "n_train", "accuracy"]
    assert all(row["n_train"] == "" for row in written)  # no training counts given: unknown, not zero
    for row, read in zip(rows, written):
        assert read["roc_auc"] == ("" if row["roc_auc"] is None else f"{row['roc_auc']:.6g}")  # one class: no ROC AUC


def test_an_empty_split_gets_the_header_and_a_prediction_that_is_not_finite_an_empty_cell(crystals_and_store, tmp_path):
    _, store = crystals_and_store
    empty = tmp_path / "errors_by_element_val.csv"
    write_element_breakdown(empty, element_breakdown(store, np.array([], dtype=np.int64), np.array([]), Normalizer(0.0, 1.0)), Normalizer(0.0, 1.0))
    assert empty.read_text().splitlines() == ["element,z,n,n_train,mae,mae_stderr,rmse,r2"]

    scored = np.arange(6)
    rows = element_breakdown(store, scored, np.array([0.0, np.nan, 2.0, 3.0, 4.0, 5.0]), Normalizer(0.0, 1.0))
    path = tmp_path / "errors_by_element_test.csv"
    write_element_breakdown(path, rows, Normalizer(0.0, 1.0))
    with open(path, newline="") as handle:
        written = {row["element"]: row for row in csv.DictReader(handle)}
    holding_the_nan = {Element.from_Z(int(z)).symbol for z in store.crystal_elements(1)}
    assert all(written[symbol]["mae"] == "" for symbol in holding_the_nan)
    assert all(float(row["mae"]) == 0.0 for symbol, row in written.items() if symbol not in holding_the_nan)  # exact elsewhere


def test_formulas_are_reduced_so_any_cell_of_a_crystal_gives_the_same_one():
    from pymatgen.core import Lattice, Structure

    from crystal_train.data.crystal import Crystal

    rutile = Structure(Lattice.tetragonal(4.59, 2.96), ["Ti", "Ti", "O", "O", "O", "O"], [
        [0, 0, 0], [0.5, 0.5, 0.5], [0.305, 0.305, 0], [0.695, 0.695, 0], [0.805, 0.195, 0.5], [0.195, 0.805, 0.5],
    ])
    salt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cells = [rutile, rutile * (2, 1, 3), Structure.from_sites(list(reversed(rutile.sites))), salt]
    crystals = [Crystal(f"c{i}", s.lattice.matrix, np.array(s.atomic_numbers), s.frac_coords, target=0.0) for i, s in enumerate(cells)]
    store = build_store(crystals, lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)
    assert store.formulas(np.arange(4)) == ["TiO2"] * 3 + ["NaCl"]
    assert store.formulas(np.array([3, 1])) == ["NaCl", "TiO2"] and store.formulas(np.array([], dtype=int)) == []
