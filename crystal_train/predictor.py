"""Predictions from Python: a trained checkpoint, or several averaged, for pymatgen Structures, ASE Atoms or files.

    from crystal_train.predictor import Predictor
    predictor = Predictor("outputs/DATE/TIME/checkpoints/best.pt")
    table = predictor.predict([structure, atoms, "my.cif"])   # a pandas DataFrame, one row per input, in order

The same path as crystal-predict: graphs at the checkpoint's settings, the precision it trained in, the
target's lower bound, and the warnings about unseen elements and suspect structures.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from crystal_train.training.ensemble import Ensemble, checkpoint_paths
from crystal_train.training.inference import resolve_device
from crystal_train.training.prediction import file_ids, predict_crystals, read_structures
from crystal_train.data.sources import RawItem


class Predictor:
    """A checkpoint (`ckpt`), or a list of them predicting their mean, loaded once for any number of predict calls."""

    def __init__(self, ckpt: str | Path | Sequence[str | Path], device: str = "auto", atom_init: str | None = None, batch_size: int = 256):
        """`atom_init` is the atom_init.json an original CGCNN checkpoint (model_best.pth.tar) needs."""
        self.device = resolve_device(str(device), "device")
        self.ensemble = Ensemble.load(checkpoint_paths(ckpt), self.device, atom_init=atom_init)
        self.batch_size = int(batch_size)

    @property
    def target(self) -> str | None:
        """The quantity predicted, e.g. formation_energy_per_atom."""
        return self.ensemble.checkpoint.get("target")

    @property
    def units(self) -> str | None:
        """Its units, e.g. eV/atom."""
        return self.ensemble.checkpoint.get("units")

    def predict(self, structures: Sequence, ids: Sequence[str] | None = None, progress: bool = False) -> pd.DataFrame:
        """One row per structure, in the order given: `id`, `prediction` (in `units`; NaN where skipped), `member_std`
        (for several checkpoints), `unseen_elements` (where the checkpoints record their training elements),
        `structure_warnings`, and `skipped`, the reason a structure could not be used ("" for the others).

        A structure is a pymatgen Structure, an ASE Atoms periodic along every axis, or a structure file's path;
        `ids` default to file ids for paths (as crystal-predict names them) and positions ("0", "1", ...) otherwise.
        """
        structures = list(structures)
        ids = _ids(structures, ids)
        items, skipped = [], {}
        for item_id, structure in zip(ids, structures):
            item = _raw_item(item_id, structure)
            if isinstance(item, str):
                skipped[item_id] = item
            else:
                items.append(item)
        store = read_structures(self.ensemble, items, listed_in="the skipped column", progress=progress)
        skipped.update(store.skipped)
        table = pd.DataFrame({"id": ids, "prediction": math.nan})
        if self.ensemble.training_elements() is not None:
            table["unseen_elements"] = ""
        table["structure_warnings"] = ""
        if len(self.ensemble.members) > 1:
            table.insert(2, "member_std", math.nan)
        if len(store):
            predicted = predict_crystals(self.ensemble, store, self.device, self.batch_size)
            position = {item_id: row for row, item_id in enumerate(ids)}
            rows = [position[item_id] for item_id in predicted.ids]
            table.loc[rows, "prediction"] = predicted.predictions
            if predicted.spread is not None:
                table.loc[rows, "member_std"] = predicted.spread
            if predicted.unseen is not None:
                table.loc[rows, "unseen_elements"] = [" ".join(predicted.unseen.get(item_id, [])) for item_id in predicted.ids]
            table.loc[rows, "structure_warnings"] = [predicted.warnings.get(item_id, "") for item_id in predicted.ids]
        table["skipped"] = [skipped.get(item_id, "") for item_id in ids]
        return table


def _ids(structures: list, ids: Sequence[str] | None) -> list[str]:
    """The given ids, checked, or the default ones: file ids for paths, positions for the others."""
    if ids is not None:
        ids = [str(item_id) for item_id in ids]
        if len(ids) != len(structures):
            raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
    else:
        paths = [i for i, structure in enumerate(structures) if isinstance(structure, (str, os.PathLike))]
        ids = [str(i) for i in range(len(structures))]
        for i, file_id in zip(paths, file_ids([Path(structures[i]) for i in paths])):
            ids[i] = file_id
    repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"ids {', '.join(repeated[:5])} are given to more than one structure; pass unique ids=")
    return ids


def _raw_item(item_id: str, structure) -> RawItem | str:
    """The item to read, or the reason it cannot be used."""
    from ase import Atoms
    from pymatgen.core import IStructure

    if isinstance(structure, (str, os.PathLike)):
        return RawItem(id=item_id, target=math.nan, split=None, path=os.fspath(structure))
    if isinstance(structure, IStructure):  # Structure too
        return RawItem(id=item_id, target=math.nan, split=None, structure=structure.as_dict())
    if isinstance(structure, Atoms):
        if not np.all(structure.pbc):
            return f"ASE Atoms not periodic along every axis (pbc={structure.pbc.tolist()}): give it a cell and pbc=True"
        arrays = {"lattice": structure.cell.array, "numbers": structure.numbers, "frac_coords": structure.get_scaled_positions(wrap=False)}
        return RawItem(id=item_id, target=math.nan, split=None, structure=arrays)
    raise TypeError(
        f"structure {item_id} is a {type(structure).__name__}: give a pymatgen Structure, an ASE Atoms or a structure file's path"
    )
