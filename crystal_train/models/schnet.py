"""Periodic SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) from PyG's building blocks.

PyG's ``SchNet`` builds its own graph with ``radius_graph`` (no periodic images), so this model
reuses its ``InteractionBlock``/``GaussianSmearing``/``ShiftedSoftplus`` and feeds them the
precomputed periodic edges and distances of a GraphBatch. Module names follow PyG's ``SchNet``.
PyG's ``CFConv`` passes messages source-to-target (x_j from ``edge_index[0]``, summed at
``edge_index[1]``), the same convention as GraphBatch, so edges are passed unchanged. Its
forward computes the cosine cutoff itself and has no place for an edge weight, so
``PeriodicInteraction`` runs the same layers with each filter scaled by cutoff × edge weight.

Defaults and why:

* ``cutoff=8.0`` must equal the graph cutoff (the project's SchNet graph: 8 Å, nearest 24
  neighbours). ``CFConv`` multiplies each filter by 0.5 (cos(pi d / cutoff) + 1), which reaches
  zero at the cutoff, so atoms entering or leaving the cutoff sphere change nothing. Distances
  are clamped to the cutoff, so edges of a larger-cutoff graph contribute nothing rather than
  picking up the rising branch of the cosine. The neighbour cap is not smooth: in dense
  crystals the 24th neighbour usually lies well inside 8 Å.
* ``num_gaussians=50`` centres on [0, cutoff]: 0.16 Å spacing and width, close to CGCNN's
  0.2 Å grid. Values below exp(-60) are set to zero: the denormal numbers of the far tails
  make CPU training several times slower (``crystal_train.models.basis``).
* ``hidden_channels=num_filters=128`` (PyG's default width); element embeddings are
  learnt from scratch, with no element table.
* ``num_interactions=3`` (PyG's default is 6): three hops of up to 8 Å already see well past
  the first coordination shells, and the cost per batch stays comparable with CGCNN's three
  convolutions.
* Mean readout (PyG's default is sum), as the project's targets are per atom or intensive, so
  a supercell gets the prediction of its primitive cell.
* ``max_z=100``: embedding rows 0..100 indexed directly by atomic number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock, ShiftedSoftplus
from torch_geometric.utils import scatter

from crystal_train.data.batch import GraphBatch
from crystal_train.models.basis import truncated_gaussians


class TruncatedGaussianSmearing(GaussianSmearing):
    """PyG's ``GaussianSmearing`` (same centres, width and buffers), with values below exp(-60) set to zero."""

    def forward(self, dist: Tensor) -> Tensor:
        return truncated_gaussians(dist, self.offset, -self.coeff)


class PeriodicInteraction(InteractionBlock):
    """PyG's ``InteractionBlock`` (same layers and parameter names) taking a per-edge filter scale:
    the message x_j ⊙ W(rbf_ij) of ``CFConv`` is multiplied by ``filter_scale`` instead of its cosine cutoff.

    With ``edge_attr_index``, ``edge_attr`` holds the expansions of distinct distances only and edge e takes
    row ``edge_attr_index[e]``: the filter network runs once per distinct distance, not once per edge.
    """

    def forward(
        self, x: Tensor, edge_index: Tensor, filter_scale: Tensor, edge_attr: Tensor, edge_attr_index: Tensor | None = None
    ) -> Tensor:
        conv = self.conv
        filters = conv.nn(edge_attr)
        if edge_attr_index is not None:  # in filter_scale's dtype first: the gather's backward sums over edges, not in bf16
            filters = filters.to(filter_scale.dtype).index_select(0, edge_attr_index)
        filters = filters * filter_scale.unsqueeze(-1)
        x = conv.lin2(conv.propagate(edge_index, x=conv.lin1(x), W=filters))
        return self.lin(self.act(x))


def cosine_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    """0.5 (cos(pi d / cutoff) + 1), as PyG's ``CFConv``; 0 at the cutoff."""
    return 0.5 * (torch.cos(distances * math.pi / cutoff) + 1.0)


class SchNet(nn.Module):
    """SchNet on periodic crystal graphs; one scalar per crystal (mean of per-atom outputs)."""

    uses_distinct_distances = True  # DeviceGraphs(..., distinct_distances=True) batches make its filters cheaper

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        cutoff: float = 8.0,
        max_z: int = 100,
    ):
        super().__init__()
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(max_z + 1, hidden_channels)
        self.distance_expansion = TruncatedGaussianSmearing(0.0, self.cutoff, num_gaussians)
        self.interactions = nn.ModuleList(
            [
                PeriodicInteraction(hidden_channels, num_gaussians, num_filters, self.cutoff)
                for _ in range(num_interactions)
            ]
        )
        self.lin1 = nn.Linear(hidden_channels, hidden_channels // 2)
        self.act = ShiftedSoftplus()
        self.lin2 = nn.Linear(hidden_channels // 2, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG SchNet's initialisation."""
        self.embedding.reset_parameters()
        for interaction in self.interactions:
            interaction.reset_parameters()
        for lin in (self.lin1, self.lin2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, batch: GraphBatch) -> Tensor:
        """Predictions of shape (num_graphs,): the mean over each crystal's atoms of the output head's value for each."""
        h = self.atom_representations(batch)
        # Output head and pooling in the weights' dtype under bf16 autocast: a bf16 mean rounds its sum and atom count.
        with torch.autocast(h.device.type, enabled=False):
            h = self.lin2(self.act(self.lin1(h.to(self.lin1.weight.dtype))))
            return scatter(h, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean").squeeze(-1)

    def crystal_features(self, batch: GraphBatch) -> Tensor:
        """Each crystal's feature vector, (num_graphs, hidden_channels): the mean of its atoms' features after the last
        interaction, which the output head reads atom by atom."""
        h = self.atom_representations(batch)
        with torch.autocast(h.device.type, enabled=False):
            return scatter(h.to(self.lin1.weight.dtype), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")

    def atom_representations(self, batch: GraphBatch) -> Tensor:
        """Each atom's features after the last interaction, (num_nodes, hidden_channels)."""
        h = self.embedding(batch.atomic_numbers)
        distances = batch.distances.to(self.lin1.weight.dtype).clamp(max=self.cutoff)
        filter_scale = cosine_cutoff(distances, self.cutoff) * batch.edge_weights.to(distances.dtype)
        if batch.distance_index is None:
            rbf = self.distance_expansion(distances)
        else:  # symmetry repeats distances: in MP crystals about a fifth are distinct, and the filters depend on nothing else
            rbf = self.distance_expansion(batch.distinct_distances.to(distances.dtype).clamp(max=self.cutoff))
        for interaction in self.interactions:
            h = h + interaction(h, batch.edge_index, filter_scale, rbf, batch.distance_index)
        return h
