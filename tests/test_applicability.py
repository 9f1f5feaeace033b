"""Crystals with elements a model never saw in training are found and named."""

from __future__ import annotations

import logging

import numpy as np

from crystal_train.data.crystal import Crystal
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.store import build_store
from crystal_train.training.applicability import unseen_elements, warn_unseen_elements


def _store():
    """Cu, NaCl, CuAl and Si crystals (ids named by their elements)."""
    crystals = [
        Crystal("cu", np.eye(3) * 3.6, np.array([29]), np.zeros((1, 3))),
        Crystal("nacl", np.eye(3) * 4.2, np.array([11, 17]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]])),
        Crystal("cual", np.eye(3) * 3.0, np.array([29, 13]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]])),
        Crystal("si", np.eye(3) * 5.4, np.array([14, 14]), np.array([[0, 0, 0], [0.25, 0.25, 0.25]])),
    ]
    return build_store(crystals, lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)


def test_store_elements_are_the_distinct_atomic_numbers_of_the_chosen_crystals():
    store = _store()
    assert sorted(store.element_counts(np.array([0, 2]))) == [13, 29]
    assert sorted(store.element_counts(np.array([1]))) == [11, 17]
    assert sorted(store.element_counts(np.arange(4))) == [11, 13, 14, 17, 29]


def test_crystals_with_elements_outside_training_are_named_with_those_elements():
    store = _store()
    training = sorted(store.element_counts(np.array([0, 2])))  # Cu and Al
    assert unseen_elements(store, np.arange(4), training) == {"nacl": ["Na", "Cl"], "si": ["Si"]}
    assert unseen_elements(store, np.array([0, 2]), training) == {}


def test_warning_names_the_crystals_and_old_checkpoints_are_not_checked(caplog):
    store = _store()
    with caplog.at_level(logging.WARNING):
        found = warn_unseen_elements(store, np.arange(4), [13, 29])
    assert found == {"nacl": ["Na", "Cl"], "si": ["Si"]}
    assert "2 of 4 crystals hold elements absent from the model's training split (Na, Si, Cl)" in caplog.text
    assert "nacl (Na Cl), si (Si)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_unseen_elements(store, np.arange(4), None) == {}
    assert caplog.text == ""
