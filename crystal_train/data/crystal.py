"""The one in-memory form of a crystal that every data source produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SITE_TOLERANCE = 1e-4  # sites closer than this in every fractional component coincide (pymatgen's CIF merge tolerance)
MIN_CELL_THICKNESS = 0.01  # Å; thinner cells are rejected, as pymatgen does
COMPARED_PAIRS = 1 << 20  # site pairs coinciding_sites compares at once


def coinciding_sites(frac_coords: np.ndarray) -> tuple[int, int] | None:
    """The first pair of sites (i < j) that coincide within SITE_TOLERANCE under periodic boundaries, or None.

    Compared a block of rows at a time, so that memory stays near COMPARED_PAIRS pairs whatever the atom count (all
    pairs at once took 1.3 GB for 5,000 atoms)."""
    n = len(frac_coords)
    rows = max(1, COMPARED_PAIRS // max(n, 1))
    for start in range(0, n, rows):
        diff = frac_coords[start:start + rows, None, :] - frac_coords[None, :, :]
        diff -= np.round(diff)
        close = np.all(np.abs(diff) < SITE_TOLERANCE, axis=2)
        pairs = np.argwhere(np.triu(close, k=start + 1))  # j > i, row i of the block being site start + i
        if len(pairs):
            return start + int(pairs[0, 0]), int(pairs[0, 1])
    return None


def cell_thickness(lattice: np.ndarray) -> float:
    """The smallest interplanar spacing of the cell (volume over the largest face), 0 for a singular cell."""
    volume = abs(float(np.linalg.det(lattice)))
    largest_face = max(float(np.linalg.norm(np.cross(lattice[i - 2], lattice[i - 1]))) for i in range(3))
    return volume / largest_face if largest_face > 0 else 0.0


def check_geometry(lattice: np.ndarray, frac_coords: np.ndarray, item_id: str) -> None:
    """Raise SkippedItem for a cell or coordinates that are not finite, a cell thinner than MIN_CELL_THICKNESS, or two
    sites at the same position."""
    if not (np.isfinite(lattice).all() and np.isfinite(frac_coords).all()):
        raise SkippedItem(item_id, "the cell or the atom positions hold a non-finite number (nan or inf)")
    thickness = cell_thickness(lattice)
    if thickness < MIN_CELL_THICKNESS:
        raise SkippedItem(item_id, f"degenerate cell: {thickness:.3g} Å thick, under {MIN_CELL_THICKNESS} Å")
    pair = coinciding_sites(frac_coords)
    if pair is not None:
        raise SkippedItem(item_id, f"two sites at one position: sites {pair[0]} and {pair[1]}, counting from 0")


@dataclass
class Crystal:
    """A periodic crystal: lattice rows are the cell vectors in Å, coordinates are fractional."""

    id: str
    lattice: np.ndarray  # (3, 3) float64
    numbers: np.ndarray  # (n,) int64 atomic numbers
    frac_coords: np.ndarray  # (n, 3) float64
    target: float | None = None
    split: str | None = None

    @property
    def num_atoms(self) -> int:
        return int(len(self.numbers))

    @classmethod
    def from_pymatgen(cls, structure, id: str, target: float | None = None, split: str | None = None) -> "Crystal":
        """Build from an ordered pymatgen Structure (ValueError on partial occupancy or a dummy species such as X)."""
        from pymatgen.core.periodic_table import DummySpecies

        if not structure.is_ordered:
            site = next(i for i, site in enumerate(structure) if not site.is_ordered)
            raise ValueError(f"partial occupancy or disorder (site {site}: {structure[site].species.formula})")
        dummies = sorted({species.symbol for species in structure.species if isinstance(species, DummySpecies)})
        if dummies:  # pymatgen gives them a made-up atomic number
            raise ValueError(f"not an element: {', '.join(dummies)}")
        return cls(
            id=str(id),
            lattice=np.array(structure.lattice.matrix, dtype=np.float64),
            numbers=np.array(structure.atomic_numbers, dtype=np.int64),
            frac_coords=np.array(structure.frac_coords, dtype=np.float64),
            target=target,
            split=split,
        )

    def to_pymatgen(self):
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), [int(z) for z in self.numbers], self.frac_coords)


class SkippedItem(Exception):
    """Raised by readers for one item that cannot be used; carries the reason for skipped.csv."""

    def __init__(self, item_id: str, reason: str):
        super().__init__(f"{item_id}: {reason}")
        self.item_id = item_id
        self.reason = reason
