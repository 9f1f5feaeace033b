"""Which crystals hold elements a model never saw in training: their predictions are extrapolations."""

from __future__ import annotations

import logging

import numpy as np
from ase.data import chemical_symbols

from crystal_train.data.store import GraphStore
from crystal_train.listing import first_few

log = logging.getLogger(__name__)


def unseen_elements(store: GraphStore, indices: np.ndarray, training_elements: list[int]) -> dict[str, list[str]]:
    """{crystal id: symbols of its elements outside `training_elements`} for the crystals at `indices` that have any."""
    seen = np.asarray(training_elements)
    unseen = {}
    for index in indices:
        new = np.setdiff1d(store.crystal_elements(int(index)), seen)
        if new.size:
            unseen[store.ids[index]] = [chemical_symbols[int(z)] for z in new]
    return unseen


def warn_unseen_elements(store: GraphStore, indices: np.ndarray, training_elements: list[int] | None) -> dict[str, list[str]]:
    """Log a warning naming the crystals with elements absent from the model's training split.

    None (checkpoints that do not record their training elements: older ones, imported CGCNN ones) checks nothing.
    """
    if training_elements is None:
        return {}
    unseen = unseen_elements(store, indices, training_elements)
    if unseen:
        symbols = sorted({symbol for found in unseen.values() for symbol in found}, key=chemical_symbols.index)
        log.warning(
            "%d of %d crystals hold elements absent from the model's training split (%s): their predictions are "
            "extrapolations: %s",
            len(unseen), len(indices), ", ".join(symbols),
            first_few(f"{item_id} ({' '.join(found)})" for item_id, found in unseen.items()),
        )
    return unseen
