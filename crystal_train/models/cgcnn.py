"""CGCNN (Xie & Grossman, PRL 120, 145301, 2018) on edge lists.

Layers, module names and parameter shapes are those of the reference implementation
(github.com/txie-93/cgcnn, cgcnn/model.py), so a reference checkpoint's ``state_dict`` loads
with ``load_state_dict(strict=True)`` once the element table is added under ``atom_features``:
the reference keeps that table (``atom_init.json``) outside the model, this model stores it
as a buffer so that checkpoints carry it. The Gaussian centres are a non-persistent buffer.

Differences from the reference: neighbours come as an edge list, so an atom with fewer than
``max_neighbors`` neighbours gets only its real ones (the reference pads with fake neighbours
at ``radius + 1`` Å that still send messages), and BatchNorm ``bn1`` normalises over the real
edges. With every atom having the full neighbour count the two agree exactly. A neighbour shell
cut by the cap is kept whole with fractional edge weights (the reference keeps whichever of its
members come first); where those members are equivalent, as in most crystals, the sums agree in
eval mode, to rounding. In training, ``bn1``'s batch statistics count the extra tied edges too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from crystal_train.data.batch import GraphBatch
from crystal_train.models.basis import truncated_gaussians


class GaussianDistance(nn.Module):
    """exp(-(d - mu_k)^2 / var^2) with mu_k = arange(dmin, dmax + step, step), as the reference.

    Values below exp(-60) are exactly zero (``crystal_train.models.basis``).
    """

    def __init__(self, dmin: float = 0.0, dmax: float = 8.0, step: float = 0.2, var: float | None = None):
        super().__init__()
        if not dmin < dmax or dmax - dmin <= step:
            raise ValueError(f"need dmin < dmax and dmax - dmin > step, got {dmin}, {dmax}, {step}")
        # np.arange in float64 so the number of centres is the reference's (41 by default).
        centers = torch.from_numpy(np.arange(dmin, dmax + step, step)).to(torch.get_default_dtype())
        self.register_buffer("centers", centers, persistent=False)
        self.var = step if var is None else var

    def forward(self, distances: Tensor) -> Tensor:
        return truncated_gaussians(distances, self.centers, 1.0 / self.var**2)


class ConvLayer(nn.Module):
    """Gated graph convolution: v_i <- softplus(v_i + bn2(sum_j w_ij sigmoid(z_f) * softplus(z_c))).

    z_ij = bn1(fc_full(v_i ⊕ v_j ⊕ u_ij)), split into filter z_f and core z_c halves; w_ij is the
    edge weight (1 except at a neighbour shell cut by the cap, ``crystal_train.data.graphs``).
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int):
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.nbr_fea_len = nbr_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.sigmoid = nn.Sigmoid()
        self.softplus1 = nn.Softplus()
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)
        self.softplus2 = nn.Softplus()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_weights: Tensor) -> Tensor:
        """x (N, atom_fea_len); edge_index row 0 neighbour j, row 1 centre i; edge_attr (E, nbr_fea_len); edge_weights (E,)."""
        a = self.atom_fea_len
        # fc_full(v_i ⊕ v_j ⊕ u_ij) = W_i v_i + W_j v_j + W_u u_ij + b: the atom terms once per atom.
        # index_select rather than x[index]: its backward is an index_add, cheaper on CPU than the
        # accumulating index_put that advanced indexing backpropagates through (docs/BENCHMARKS.md).
        w_self, w_nbr, w_edge = self.fc_full.weight.split([a, a, self.nbr_fea_len], dim=1)
        src, dst = edge_index
        # The edge term is accumulated into the gathered centre term by addmm (beta=1) and the neighbour term added
        # in place: two fewer (E, 2*atom_fea_len) passes and allocations; neither buffer is saved for backward.
        z = torch.addmm(F.linear(x, w_self, self.fc_full.bias).index_select(0, dst), edge_attr, w_edge.t())
        z = z.add_(F.linear(x, w_nbr).index_select(0, src))
        z_filter, z_core = self.bn1(z).chunk(2, dim=-1)
        messages = self.sigmoid(z_filter) * self.softplus1(z_core)
        # in the parameters' dtype, also under bf16 autocast: 2/3 in bf16 is 0.668
        messages = messages * edge_weights.to(self.fc_full.weight.dtype).unsqueeze(-1)
        summed = scatter(messages, dst, dim=0, dim_size=x.size(0), reduce="sum")
        return self.softplus2(x + self.bn2(summed))


class CGCNN(nn.Module):
    """Crystal graph convolutional network for one scalar per crystal.

    atom_features: (Zmax + 1, F) element table indexed by atomic number; by default
    ``crystal_train.data.features.cgcnn_feature_table()``. When importing a reference
    checkpoint, add the table it was trained with to its state_dict as ``atom_features``.
    """

    def __init__(
        self,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        n_h: int = 1,
        gaussian_dmin: float = 0.0,
        gaussian_dmax: float = 8.0,
        gaussian_step: float = 0.2,
        gaussian_var: float | None = None,
        atom_features: Tensor | None = None,
    ):
        super().__init__()
        if atom_features is None:
            from crystal_train.data.features import cgcnn_feature_table

            atom_features = cgcnn_feature_table()
        self.register_buffer("atom_features", torch.as_tensor(atom_features, dtype=torch.get_default_dtype()).clone())
        self.gaussian = GaussianDistance(gaussian_dmin, gaussian_dmax, gaussian_step, gaussian_var)
        orig_atom_fea_len = self.atom_features.shape[1]
        nbr_fea_len = self.gaussian.centers.numel()
        self.n_h = n_h
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.conv_to_fc_softplus = nn.Softplus()
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.softpluses = nn.ModuleList([nn.Softplus() for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, batch: GraphBatch) -> Tensor:
        """Predictions of shape (num_graphs,)."""
        crys = self.crystal_features(batch)
        with torch.autocast(crys.device.type, enabled=False):  # the head in the weights' dtype, as the pooling
            crys = self.conv_to_fc_softplus(self.conv_to_fc(self.conv_to_fc_softplus(crys)))
            if self.n_h > 1:
                for fc, softplus in zip(self.fcs, self.softpluses):
                    crys = softplus(fc(crys))
            return self.fc_out(crys).squeeze(-1)

    def crystal_features(self, batch: GraphBatch) -> Tensor:
        """Each crystal's feature vector, (num_graphs, atom_fea_len): the mean of its atoms' features after the last
        convolution, which the output head reads."""
        x = self.embedding(self.atom_features[batch.atomic_numbers])
        edge_attr = self.gaussian(batch.distances.to(self.embedding.weight.dtype))
        for conv in self.convs:
            x = conv(x, batch.edge_index, edge_attr, batch.edge_weights)
        # Pooling in the weights' dtype under bf16 autocast: a bf16 mean rounds its sum and atom count.
        with torch.autocast(x.device.type, enabled=False):
            return scatter(x.to(self.fc_out.weight.dtype), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
