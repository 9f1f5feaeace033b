"""CGCNN one-hot element features built from pymatgen's element data (no shipped atom_init.json).

Recipe of Xie & Grossman (PRL 120, 145301, 2018, Supplementary Table S2): nine properties, each
one-hot encoded, continuous ones in 10 bins.  Segment order and bin ranges were read off the
CGCNN repository's reference ``atom_init.json``:

=====================  =====  ===============================================================
segment                width  encoding
=====================  =====  ===============================================================
group number           19     0 (lanthanides and actinides, i.e. f block) … 18
period                 7      1 … 7
electronegativity      10     linear bins over [0.5, 4.0] (Pauling)
covalent radius        10     linear bins over [0, 3.0] Å (Cordero 2008, from ASE)
valence electrons      12     1 … 12: group (s, d block), group - 10 (p block), 2 (f block, He)
1st ionization energy  10     log bins over [3.7, 27] eV
electron affinity      10     linear bins over [-2.6, 3.4] eV; none when <= 0 (no bound anion)
block                  4      s, p, d, f (He counted as s)
atomic volume          10     log bins over [4.6, 70] cm³/mol (molar volume)
=====================  =====  ===============================================================

Values outside a range fall into the first/last bin; a property without data leaves its segment zero.
"""

from __future__ import annotations

import json
import math
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

MAX_Z = 100
FEATURE_SEGMENTS: tuple[tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)
NUM_FEATURES = sum(width for _, width in FEATURE_SEGMENTS)
_BLOCKS = ("s", "p", "d", "f")
# continuous properties: (lower edge, upper edge, log scale) of their 10 equal-width bins
_BINS = {
    "electronegativity": (0.5, 4.0, False),
    "covalent_radius": (0.0, 3.0, False),
    "ionization_energy": (3.7, 27.0, True),
    "electron_affinity": (-2.6, 3.4, False),
    "atomic_volume": (4.6, 70.0, True),
}


def cgcnn_feature_table() -> torch.Tensor:
    """(101, 92) float32 table; row Z is the one-hot feature vector of element Z (row 0 is zero)."""
    return torch.from_numpy(_feature_array().copy())


def supported_elements(table: torch.Tensor) -> frozenset[int]:
    """Atomic numbers whose row in ``table`` is not all zero."""
    return frozenset(torch.nonzero(table.abs().sum(dim=1)).flatten().tolist())


def builtin_elements() -> frozenset[int]:
    """The elements of the built-in CGCNN table: what training keeps."""
    return supported_elements(cgcnn_feature_table())


def model_elements(model: torch.nn.Module) -> frozenset[int]:
    """The elements `model` can featurise: its own element table's, or the built-in table's."""
    table = getattr(model, "atom_features", None)
    return supported_elements(table.detach().cpu()) if table is not None else builtin_elements()


def load_atom_init_json(path: str | Path) -> torch.Tensor:
    """Read a CGCNN ``atom_init.json`` ({"Z": [features]}) into a (max_Z + 1, F) float32 table."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read atom_init JSON ({error})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty object mapping atomic numbers to feature lists")
    rows: dict[int, list[float]] = {}
    for key, values in data.items():
        z = int(key) if isinstance(key, str) and key.strip().isdigit() else 0
        if z < 1 or not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ValueError(f"{path}: entry {key!r} must map an atomic number >= 1 to a list of numbers")
        rows[z] = values
    widths = {len(values) for values in rows.values()}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"{path}: feature lists must share one non-zero length, got lengths {sorted(widths)}")
    table = torch.zeros(max(rows) + 1, widths.pop(), dtype=torch.float32)
    for z, values in rows.items():
        table[z] = torch.tensor(values, dtype=torch.float32)
    return table


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@lru_cache(maxsize=1)
def _feature_array() -> np.ndarray:
    table = np.zeros((MAX_Z + 1, NUM_FEATURES), dtype=np.float32)
    for z in range(1, MAX_Z + 1):
        properties = _element_properties(z)
        table[z] = np.concatenate([_encode(name, width, properties[name]) for name, width in FEATURE_SEGMENTS])
    table.setflags(write=False)
    return table


def _encode(name: str, width: int, value) -> np.ndarray:
    """One-hot segment: ``value`` is a 0-based category index, or the raw value of a binned property."""
    if name in _BINS and value is not None:
        low, high, log = _BINS[name]
        if log:
            value, low, high = math.log(value), math.log(low), math.log(high)
        value = math.floor((value - low) / (high - low) * width)
    vector = np.zeros(width, dtype=np.float32)
    if value is not None:
        vector[min(max(value, 0), width - 1)] = 1.0
    return vector


def _element_properties(z: int) -> dict[str, float | int | None]:
    """Category indices and raw continuous values of element ``z``; None where there is no data."""
    from ase.data import covalent_radii
    from pymatgen.core import Element

    element = Element.from_Z(z)
    # pymatgen places He in the p block by its column; its 1s² shell makes it s block (as in CGCNN)
    block = "s" if z == 2 else element.block
    group = 0 if block == "f" else element.group
    valence = {"s": 2 if z == 2 else group, "p": group - 10, "d": group, "f": 2}[block]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        affinity = _finite(lambda: element.electron_affinity)
        return {
            "group": group,
            "period": element.row - 1,
            "electronegativity": _finite(lambda: element.X),
            "covalent_radius": float(covalent_radii[z]),
            "valence_electrons": valence - 1,
            "ionization_energy": _finite(lambda: element.ionization_energy),
            "electron_affinity": affinity if affinity is not None and affinity > 0 else None,
            "block": _BLOCKS.index(block),
            "atomic_volume": _finite(lambda: element.molar_volume),
        }


def _finite(getter) -> float | None:
    """The property's value as a float, or None when pymatgen has no (finite) value."""
    try:
        value = getter()
    except (KeyError, AttributeError, ValueError, TypeError):
        return None
    return float(value) if value is not None and math.isfinite(float(value)) else None
