"""Periodic neighbour graphs: every periodic image within the cutoff, optionally the k nearest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

from crystal_train.data.crystal import Crystal

# Distances equal to within this many Å count as a tie; ties are then broken by the
# neighbour's atomic number, its index and its image, so the choice is deterministic.
TIE_DECIMALS = 6


@dataclass(frozen=True)
class GraphSettings:
    """Every setting that changes a graph; part of the cache key."""

    cutoff: float = 8.0
    max_neighbors: int | None = 12

    def __post_init__(self):
        if not (math.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"graph.cutoff={self.cutoff}: give a positive distance in Å, such as 8.0")
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise ValueError(f"graph.max_neighbors={self.max_neighbors}: give at least 1, or null for every neighbour within the cutoff")

    def key(self) -> dict:
        return {"cutoff": float(self.cutoff), "max_neighbors": self.max_neighbors}


@dataclass
class CrystalGraph:
    """Edges of one crystal with local atom indices (row 0 neighbour j, row 1 centre i)."""

    numbers: np.ndarray  # (n,) int64
    edge_index: np.ndarray  # (2, E) int64
    distances: np.ndarray  # (E,) float64
    images: np.ndarray  # (E, 3) int32 lattice translation of the neighbour (relative to the coordinates as given)

    @property
    def isolated_atoms(self) -> int:
        """Atoms with no neighbour within the cutoff."""
        return int(len(self.numbers) - np.unique(self.edge_index[1]).size)


def build_graph(crystal: Crystal, settings: GraphSettings) -> CrystalGraph:
    """All neighbours j of each atom i with |r_j + T - r_i| <= cutoff over all lattice translations T.

    Periodic images of the atom itself are included; only the zero-distance self pair is not.
    With max_neighbors set, each atom keeps its k nearest, ties broken deterministically.
    """
    lattice = np.ascontiguousarray(crystal.lattice, dtype=np.float64)
    cart = np.ascontiguousarray(crystal.frac_coords @ lattice, dtype=np.float64)
    centers, neighbors, images, distances = find_points_in_spheres(
        cart,
        cart,
        r=float(settings.cutoff),
        pbc=np.array([1, 1, 1], dtype=np.int64),
        lattice=lattice,
        tol=1e-8,
    )
    keep = distances > 1e-8
    if settings.max_neighbors is not None:
        keep &= _not_beyond_kth(centers, distances, keep, len(crystal.numbers), settings.max_neighbors)
    centers, neighbors, images, distances = centers[keep], neighbors[keep], images[keep], distances[keep]
    images = np.rint(images).astype(np.int64)
    order = np.lexsort(
        (
            images[:, 2],
            images[:, 1],
            images[:, 0],
            neighbors,
            crystal.numbers[neighbors],
            np.round(distances, TIE_DECIMALS),
            centers,
        )
    )
    centers, neighbors, images, distances = centers[order], neighbors[order], images[order], distances[order]
    if settings.max_neighbors is not None:
        rank = _rank_within_group(centers)
        keep = rank < settings.max_neighbors
        centers, neighbors, images, distances = centers[keep], neighbors[keep], images[keep], distances[keep]
    return CrystalGraph(
        numbers=np.asarray(crystal.numbers, dtype=np.int64),
        edge_index=np.stack([neighbors, centers]).astype(np.int64),
        distances=distances.astype(np.float64),
        images=images.astype(np.int32),
    )


def _not_beyond_kth(centers: np.ndarray, distances: np.ndarray, valid: np.ndarray, num_atoms: int, k: int) -> np.ndarray:
    """Edges no farther than their centre's k-th nearest (rounded as in the tie-break): the
    only candidates for the k nearest, found with one integer sort so the full tie-breaking sort
    runs on ~k edges per atom rather than on everything within the cutoff."""
    ticks = np.rint(distances * 10.0**TIE_DECIMALS).astype(np.int64)
    key = np.where(valid, centers.astype(np.int64) << 40 | ticks, -1)
    ranked = np.sort(key)
    ranked = ranked[ranked >= 0]
    sorted_centers = ranked >> 40
    at_k = _rank_within_group(sorted_centers) == k - 1
    kth = np.full(num_atoms, np.iinfo(np.int64).max)
    kth[sorted_centers[at_k]] = ranked[at_k] & ((1 << 40) - 1)
    return ticks <= kth[centers]


def _rank_within_group(sorted_groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    if sorted_groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    lengths = np.diff(np.r_[starts, sorted_groups.size])
    return np.arange(sorted_groups.size) - np.repeat(starts, lengths)
