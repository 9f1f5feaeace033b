"""The batch object that every model takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GraphBatch:
    """A batch of periodic crystal graphs, concatenated.

    edge_index follows PyG: row 0 is the neighbour j (message source), row 1 the centre atom i
    (where messages are summed). distances are |r_j + image - r_i| in Å, one per edge; each
    message is multiplied by its edge weight (1 except at a shell cut by the neighbour cap).
    `distinct_distances[distance_index]` equals `distances` where a model can compute a function of the
    distance once per distinct value (DeviceGraphs provides them; None elsewhere).
    """

    atomic_numbers: torch.Tensor  # (N,) long
    edge_index: torch.Tensor  # (2, E) long, global indices into the batch's atoms
    distances: torch.Tensor  # (E,) float
    edge_weights: torch.Tensor  # (E,) float
    batch: torch.Tensor  # (N,) long, graph index of each atom
    num_graphs: int
    targets: torch.Tensor | None = None  # (G,) float, normalised or raw as the caller decides
    distinct_distances: torch.Tensor | None = None  # (D,) float, each crystal's distinct edge distances
    distance_index: torch.Tensor | None = None  # (E,) long, each edge's position in distinct_distances

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return GraphBatch(
            atomic_numbers=move(self.atomic_numbers),
            edge_index=move(self.edge_index),
            distances=move(self.distances),
            edge_weights=move(self.edge_weights),
            batch=move(self.batch),
            num_graphs=self.num_graphs,
            targets=move(self.targets),
            distinct_distances=move(self.distinct_distances),
            distance_index=move(self.distance_index),
        )
