"""Test helpers: small random crystals, a list of Crystals as one GraphBatch, and a Trainer over stored graphs."""

from __future__ import annotations

import hydra
import numpy as np
import torch

from config_utils import compose_config

from crystal_train.data.batch import GraphBatch
from crystal_train.data.crystal import Crystal
from crystal_train.data.graphs import GraphSettings, build_graph
from crystal_train.data.loader import BatchIterator, DeviceGraphs
from crystal_train.training.loop import Trainer
from crystal_train.training.metrics import Normalizer


def make_batch(crystals: list[Crystal], settings: GraphSettings, dtype: torch.dtype = torch.float64) -> GraphBatch:
    """Concatenate the crystals' graphs, offsetting edge indices by the atoms before each crystal."""
    graphs = [build_graph(c, settings) for c in crystals]
    offsets = np.cumsum([0] + [len(g.numbers) for g in graphs[:-1]])
    targets = [c.target for c in crystals]
    return GraphBatch(
        atomic_numbers=torch.from_numpy(np.concatenate([g.numbers for g in graphs])),
        edge_index=torch.from_numpy(np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1)),
        distances=torch.from_numpy(np.concatenate([g.distances for g in graphs])).to(dtype),
        edge_weights=torch.from_numpy(np.concatenate([g.weights for g in graphs])).to(dtype),
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


def make_trainer(graphs: DeviceGraphs, model_name: str, num_crystals: int, tmp_path, *overrides: str, precision: str = "32") -> Trainer:
    """A Trainer with the shipped model and optimizer configs, clipping gradients, over num_crystals in batches of 4.

    Targets are scaled by mean 2, std 1.4 and predictions floored at 0 (set `trainer.normalizer` to change that).
    """
    cfg = compose_config("train", [f"model={model_name}", "model.n_conv=1" if model_name == "cgcnn" else "model.num_interactions=1",
                                   "trainer.device=cpu", "trainer.progress_bar=false", "trainer.grad_clip=1.0",
                                   f"trainer.precision={precision}", *overrides])
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model)
    optimizer = hydra.utils.instantiate(cfg.optim)(model.parameters())
    batches = BatchIterator(graphs, np.arange(num_crystals), batch_size=4, shuffle=True)
    return Trainer(model, optimizer, None, Normalizer(2.0, 1.4, minimum=0.0), batches, batches, cfg.trainer, tmp_path, {})
