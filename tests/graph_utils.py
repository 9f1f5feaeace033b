"""Test helpers: small random crystals, and a list of Crystals as one GraphBatch."""

from __future__ import annotations

import numpy as np
import torch

from crystal_train.data.batch import GraphBatch
from crystal_train.data.crystal import Crystal
from crystal_train.data.graphs import GraphSettings, build_graph


def make_batch(crystals: list[Crystal], settings: GraphSettings, dtype: torch.dtype = torch.float64) -> GraphBatch:
    """Concatenate the crystals' graphs, offsetting edge indices by the atoms before each crystal."""
    graphs = [build_graph(c, settings) for c in crystals]
    offsets = np.cumsum([0] + [len(g.numbers) for g in graphs[:-1]])
    targets = [c.target for c in crystals]
    return GraphBatch(
        atomic_numbers=torch.from_numpy(np.concatenate([g.numbers for g in graphs])),
        edge_index=torch.from_numpy(np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1)),
        distances=torch.from_numpy(np.concatenate([g.distances for g in graphs])).to(dtype),
        batch=torch.from_numpy(np.concatenate([np.full(len(g.numbers), i) for i, g in enumerate(graphs)])),
        num_graphs=len(crystals),
        targets=None if None in targets else torch.tensor(targets, dtype=dtype),
    )


def random_crystals(count: int, seed: int = 11) -> list[Crystal]:
    """`count` crystals of 1–4 Li/O/Si/Fe atoms in skewed 3–4.5 Å cells; crystal i has target i."""
    rng = np.random.default_rng(seed)
    crystals = []
    for i in range(count):
        n = int(rng.integers(1, 5))
        lattice = np.diag(rng.uniform(3.0, 4.5, 3)) + rng.uniform(-0.5, 0.5, (3, 3))
        crystals.append(Crystal(f"c{i}", lattice, rng.choice([3, 8, 14, 26], n), rng.random((n, 3)), target=float(i)))
    return crystals
