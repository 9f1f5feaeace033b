"""Periodic neighbour graphs: every periodic image within the cutoff, optionally the k nearest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

from crystal_train.data.crystal import Crystal

# Neighbours within this distance (Å) of an atom's k-th nearest are tied with it at the cap.
TIE_TOLERANCE = 1e-6

# Bump when build_graph gives other graphs for the same settings; checkpoints record the version
# they were trained on. What each version changed, and whether graphs without a cap changed too:
GRAPH_VERSION_CHANGES = {
    2: (
        "a neighbour shell cut by max_neighbors is kept whole with shared edge weights, "
        "rather than its first members by element and atom index",
        False,
    ),
}
GRAPH_VERSION = max(GRAPH_VERSION_CHANGES)


def graph_changes_since(version: int, settings: "GraphSettings") -> list[str]:
    """What changed in graphs of these settings after graph version `version`."""
    return [
        change for number, (change, uncapped_too) in GRAPH_VERSION_CHANGES.items()
        if number > version and (uncapped_too or settings.max_neighbors is not None)
    ]


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
    weights: np.ndarray  # (E,) float64: 1, or a share of the places left at the neighbour cap (see build_graph)
    images: np.ndarray  # (E, 3) int32 lattice translation of the neighbour (relative to the coordinates as given)

    @property
    def isolated_atoms(self) -> int:
        """Atoms with no neighbour within the cutoff."""
        return int(len(self.numbers) - np.unique(self.edge_index[1]).size)


def build_graph(crystal: Crystal, settings: GraphSettings) -> CrystalGraph:
    """All neighbours j of each atom i with |r_j + T - r_i| <= cutoff over all lattice translations T.

    Periodic images of the atom itself are included; only the zero-distance self pair is not.
    With max_neighbors=k, each atom keeps the neighbours no farther than its k-th nearest. When
    others lie at the k-th distance too (within TIE_TOLERANCE: a shell cut by the cap), all of
    them are kept with the weight (k - nearer) / tied, the nearer ones weigh 1: the weights sum to
    min(k, neighbours), and no atom index decides which neighbours count, so the graph does not
    depend on atom order or on the choice of cell. Edges are ordered by centre, then distance.
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
    weights = np.ones(int(keep.sum()))
    if settings.max_neighbors is not None:
        weights = _nearest_weights(centers[keep], distances[keep], len(crystal.numbers), settings.max_neighbors)
        keep[keep] = weights > 0
        weights = weights[weights > 0]
    centers, neighbors, images, distances = centers[keep], neighbors[keep], images[keep], distances[keep]
    order = np.lexsort((distances, centers))
    return CrystalGraph(
        numbers=np.asarray(crystal.numbers, dtype=np.int64),
        edge_index=np.stack([neighbors[order], centers[order]]).astype(np.int64),
        distances=distances[order].astype(np.float64),
        weights=weights[order],
        images=np.rint(images[order]).astype(np.int32),
    )


def _nearest_weights(centers: np.ndarray, distances: np.ndarray, num_atoms: int, k: int) -> np.ndarray:
    """Each edge's weight under a cap of k neighbours per centre, with d_k the centre's k-th
    smallest distance: 1 below d_k - TIE_TOLERANCE, (k - nearer) / tied within TIE_TOLERANCE of
    d_k, 0 beyond.

    One integer sort of (centre, distance in TIE_TOLERANCE steps) packed into single integers finds
    each centre's k-th step; the exact d_k is then found among the few edges up to two steps past it.
    """
    steps = np.floor(distances / TIE_TOLERANCE).astype(np.int64)
    ranked = np.sort(centers.astype(np.int64) << 40 | steps)
    sorted_centers = ranked >> 40
    at_k = _rank_within_group(sorted_centers) == k - 1
    kth_step = np.full(num_atoms, np.iinfo(np.int64).max)
    kth_step[sorted_centers[at_k]] = ranked[at_k] & ((1 << 40) - 1)
    # every edge within TIE_TOLERANCE past d_k is at most one step past its step; two allow for rounding
    candidates = np.flatnonzero(steps - 2 <= kth_step[centers])
    candidates = candidates[np.lexsort((distances[candidates], centers[candidates]))]
    owner, distance = centers[candidates], distances[candidates]
    at_k = _rank_within_group(owner) == k - 1
    kth = np.full(num_atoms, np.inf)
    kth[owner[at_k]] = distance[at_k]
    nearer = distance < kth[owner] - TIE_TOLERANCE
    tied = ~nearer & (distance <= kth[owner] + TIE_TOLERANCE)
    nearer_count = np.bincount(owner[nearer], minlength=num_atoms)
    tied_count = np.bincount(owner[tied], minlength=num_atoms)
    candidate_weights = nearer.astype(np.float64)
    candidate_weights[tied] = (k - nearer_count[owner[tied]]) / tied_count[owner[tied]]
    weights = np.zeros(distances.size)
    weights[candidates] = candidate_weights
    return weights


def _rank_within_group(sorted_groups: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    if sorted_groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    lengths = np.diff(np.r_[starts, sorted_groups.size])
    return np.arange(sorted_groups.size) - np.repeat(starts, lengths)
