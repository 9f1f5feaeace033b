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
from crystal_train.training.artifacts import feature_columns
from crystal_train.training.prediction import file_ids, predict_crystals, read_structures, repeated_files
from crystal_train.data.sources import RawItem
from crystal_train.listing import first_few


class Predictor:
    """A checkpoint (`ckpt`), or a list of them predicting their mean, loaded once for any number of predict calls."""

    def __init__(
        self, ckpt: str | Path | Sequence[str | Path], device: str = "auto", atom_init: str | None = None, batch_size: int = 256
    ):
        """`atom_init` is the atom_init.json an original CGCNN checkpoint (model_best.pth.tar) needs."""
        self.device = resolve_device(str(device), "device")
        self.ensemble = Ensemble.load(checkpoint_paths(ckpt), self.device, atom_init=atom_init)
        self.batch_size = int(batch_size)

    @property
    def target(self) -> str | None:
        """The quantity predicted, e.g. formation_energy_per_atom."""
        return self.ensemble.checkpoint.get("target")

    @property
    def task(self) -> str:
        """regression, or classification: then each prediction is the probability of class 1 (and units are empty)."""
        return self.ensemble.task

    @property
    def units(self) -> str | None:
        """Its units, e.g. eV/atom."""
        return self.ensemble.checkpoint.get("units")

    def predict(
        self, structures: Sequence, ids: Sequence[str] | None = None, progress: bool = False, features: bool = False
    ) -> pd.DataFrame:
        """One row per structure, in the order given: `id`, `formula` (reduced; "" where skipped), `prediction` (in `units`, or a classifier's probability of
        class 1; NaN where skipped), `member_std` (for several checkpoints), `unseen_elements` (where the checkpoints
        record their training elements), `structure_warnings`, and `skipped`, the reason a structure could not be used
        ("" for the others). With `features` (one checkpoint only), also `feature_0` ... `feature_<width-1>`, the
        crystal's feature vector, `crystal_features` of the model (NaN where skipped; no such columns when no structure
        could be used), e.g. for a model of your own on top.

        A structure is a pymatgen Structure, an ASE Atoms periodic along every axis, CIF text, or a structure file's
        path; one alone needs no list. `ids` default to file ids when every structure is a path (as crystal-predict
        names them), else to positions ("0", "1", ...).
        """
        if features:
            self.ensemble.check_one_model("crystal features")
        structures = [structures] if _is_one_structure(structures) else list(structures)
        ids = _ids(structures, ids)
        items = [_raw_item(item_id, structure) for item_id, structure in zip(ids, structures)]
        store = read_structures(self.ensemble, items, listed_in="the skipped column", progress=progress)
        skipped = dict(store.skipped)
        table = pd.DataFrame({"id": pd.Series(ids, dtype=object), "formula": "", "prediction": math.nan})
        if self.ensemble.training_elements() is not None:
            table["unseen_elements"] = ""
        table["structure_warnings"] = ""
        if len(self.ensemble.members) > 1:
            table.insert(3, "member_std", math.nan)
        if len(store):
            predicted = predict_crystals(self.ensemble, store, self.device, self.batch_size, features=features)
            position = {item_id: row for row, item_id in enumerate(ids)}
            rows = [position[item_id] for item_id in predicted.ids]
            table.loc[rows, "formula"] = predicted.formulas
            table.loc[rows, "prediction"] = predicted.predictions
            if predicted.spread is not None:
                table.loc[rows, "member_std"] = predicted.spread
            if predicted.unseen is not None:
                table.loc[rows, "unseen_elements"] = [" ".join(predicted.unseen.get(item_id, [])) for item_id in predicted.ids]
            table.loc[rows, "structure_warnings"] = [predicted.warnings.get(item_id, "") for item_id in predicted.ids]
        table["skipped"] = pd.Series([skipped.get(item_id, "") for item_id in ids], dtype=object)
        if features and len(store):  # none when no structure could be used
            values = np.full((len(ids), predicted.features.shape[1]), np.nan, dtype=np.float32)
            values[rows] = predicted.features
            table = pd.concat([table, pd.DataFrame(values, columns=feature_columns(values.shape[1]))], axis=1)
        return table


def _is_one_structure(structures) -> bool:
    from ase import Atoms
    from pymatgen.core import IStructure

    return isinstance(structures, (str, os.PathLike, IStructure, Atoms))


def _is_cif_text(structure) -> bool:
    return isinstance(structure, str) and "\n" in structure


def _ids(structures: list, ids: Sequence[str] | None) -> list[str]:
    """The given ids, which must be unique, or the default ones: file ids if every structure is a file, else positions."""
    if ids is None:
        if structures and all(isinstance(s, (str, os.PathLike)) and not _is_cif_text(s) for s in structures):
            paths = [Path(s).expanduser() for s in structures]
            repeated = repeated_files(paths)
            if repeated:
                raise ValueError(f"{first_few(repeated)} listed more than once: give each file once, or ids=")
            return file_ids(paths)  # unique, as crystal-predict's
        return [str(i) for i in range(len(structures))]
    ids = [str(item_id) for item_id in ids]
    if len(ids) != len(structures):
        raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
    repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"ids={first_few(repeated)} name more than one structure each: give unique ids")
    return ids


def _raw_item(item_id: str, structure) -> RawItem:
    """The item to read; what cannot be used is skipped with its reason when it is read."""
    from ase import Atoms
    from pymatgen.core import IStructure

    item = RawItem(id=item_id, target=math.nan, split=None)
    if _is_cif_text(structure):
        item.cif_text = structure
    elif isinstance(structure, (str, os.PathLike)):
        item.path = os.fspath(Path(structure).expanduser())
    elif isinstance(structure, IStructure):  # Structure too
        item.structure = structure.as_dict()
    elif isinstance(structure, Atoms):
        item.structure = {"lattice": structure.cell.array, "numbers": structure.numbers, "cart_coords": structure.positions,
                          "pbc": structure.pbc}
    else:
        raise TypeError(
            f"structure {item_id} is a {type(structure).__name__}: give a pymatgen Structure, an ASE Atoms, CIF text "
            "or a structure file's path"
        )
    return item
