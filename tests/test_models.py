"""CGCNN and SchNet: symmetry invariances, batching, gradients, edge direction, reference layout."""

from __future__ import annotations

import argparse
import importlib
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATASETS
from graph_utils import make_batch

from crystal_train.data.batch import GraphBatch
from crystal_train.data.crystal import Crystal
from crystal_train.data.graphs import GraphSettings, build_graph
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.store import build_store
from crystal_train.models import CGCNN, SchNet
from crystal_train.models.schnet import cosine_cutoff

CHECKPOINT = SHARED_DATASETS / "cgcnn_pretrained" / "formation-energy-per-atom.pth.tar"
SETTINGS = {"cgcnn": GraphSettings(cutoff=8.0, max_neighbors=12), "schnet": GraphSettings(cutoff=8.0, max_neighbors=24)}
ELEMENTS = np.array([3, 8, 14, 26])


def random_crystal(rng: np.random.Generator, index: int = 0) -> Crystal:
    n = int(rng.integers(2, 5))
    lattice = np.diag(rng.uniform(3.0, 4.5, 3)) + rng.uniform(-0.8, 0.8, (3, 3))
    return Crystal(
        id=f"c{index}",
        lattice=lattice,
        numbers=rng.choice(ELEMENTS, n),
        frac_coords=rng.random((n, 3)),
        target=float(rng.normal()),
    )


def random_table() -> torch.Tensor:
    return torch.rand(101, 92, generator=torch.Generator().manual_seed(1))


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "cgcnn":
        model = CGCNN(atom_fea_len=16, n_conv=2, h_fea_len=16, n_h=2, atom_features=random_table())
    else:
        model = SchNet(hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=20)
    return model.double()


def warmed_up(name: str) -> torch.nn.Module:
    """make_model in eval mode; BatchNorm has non-trivial affine parameters and running stats."""
    model = make_model(name)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.3)
    rng = np.random.default_rng(100)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(make_batch([random_crystal(rng, i) for i in range(3)], SETTINGS[name]))
    return model.eval()


@pytest.fixture(scope="module", params=["cgcnn", "schnet"])
def eval_model(request):
    """(name, warmed-up model in eval mode)."""
    return request.param, warmed_up(request.param)


def rotated(c: Crystal, rng) -> Crystal:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return replace(c, lattice=c.lattice @ q)


def translated(c: Crystal, rng) -> Crystal:
    return replace(c, frac_coords=(c.frac_coords + rng.random(3)) % 1.0)


def permuted(c: Crystal, rng) -> Crystal:
    perm = rng.permutation(c.num_atoms)
    if (perm == np.arange(c.num_atoms)).all():
        perm = perm[::-1]
    return replace(c, numbers=c.numbers[perm], frac_coords=c.frac_coords[perm])


def supercell(c: Crystal, rng) -> Crystal:
    shifts = np.array(list(itertools.product([0, 1], repeat=3)))
    frac = ((c.frac_coords[:, None, :] + shifts[None]) / 2).reshape(-1, 3)
    return replace(c, lattice=2 * c.lattice, numbers=np.repeat(c.numbers, 8), frac_coords=frac)


def other_cell(c: Crystal, rng) -> Crystal:
    """Cell vectors (a, a + b, a + b + c); r = f L = f' M L gives f' = f M^-1."""
    m = np.array([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]])
    return replace(c, lattice=m @ c.lattice, frac_coords=(c.frac_coords @ np.linalg.inv(m)) % 1.0)


@pytest.mark.parametrize("output", ["prediction", "crystal_features"])
@pytest.mark.parametrize("transform", [rotated, translated, permuted, supercell, other_cell])
def test_prediction_and_crystal_features_invariant(eval_model, transform, output):
    name, model = eval_model
    run = model if output == "prediction" else model.crystal_features
    rng = np.random.default_rng(7)
    crystal = random_crystal(rng)
    with torch.no_grad():
        before = run(make_batch([crystal], SETTINGS[name]))
        after = run(make_batch([transform(crystal, rng)], SETTINGS[name]))
    assert before.shape == ((1,) if output == "prediction" else (1, 16))  # 16: the models' width
    # float64: symmetry-equivalent inputs agree to rounding, far below the 1e-4 control below.
    torch.testing.assert_close(after, before, rtol=0, atol=1e-8)


def grid_crystal(rng: np.random.Generator, index: int) -> Crystal:
    """Atoms of random elements on a grid with vacancies: many inequivalent sites tie at the 12th and 24th neighbour."""
    shape = rng.integers(1, 3, 3)
    points = np.array(list(itertools.product(*(range(s) for s in shape))), dtype=float)
    keep = rng.random(len(points)) < 0.75
    keep[0] = True
    lattice = np.diag(shape * rng.choice([1.8, 2.0, 2.4, 2.9], 3))
    if index % 2:
        lattice = lattice @ np.array([[1.0, 0, 0], [0.5, np.sqrt(3) / 2, 0], [0, 0, 1]])  # hexagonal shells tie too
    return Crystal(f"grid{index}", lattice, rng.choice(ELEMENTS, int(keep.sum())), (points[keep] + 0.5) / shape, target=0.0)


def supercell_of(c: Crystal, repeats: tuple[int, int, int]) -> Crystal:
    shifts = np.array(list(itertools.product(*(range(r) for r in repeats))))
    frac = ((c.frac_coords[:, None, :] + shifts[None]) / repeats).reshape(-1, 3)
    return replace(c, lattice=np.array(repeats)[:, None] * c.lattice, numbers=np.repeat(c.numbers, len(shifts)), frac_coords=frac)


@pytest.mark.parametrize("repeats", [(2, 1, 1), (1, 2, 2), (2, 2, 2)])
def test_prediction_invariant_at_the_default_neighbour_caps_with_ties_among_inequivalent_sites(eval_model, repeats):
    """Anisotropic supercells, another cell, rotation, permutation and translation at once, at 12 (CGCNN) and 24 (SchNet)
    neighbours, on crystals whose cap cuts shells of inequivalent sites: keeping the first neighbours by index fails this."""
    name, model = eval_model
    rng = np.random.default_rng(15)
    crystals = [grid_crystal(rng, i) for i in range(4)]
    assert all((build_graph(c, SETTINGS[name]).weights < 1).any() for c in crystals)  # every cap cuts a shell
    rewritten = [translated(permuted(rotated(other_cell(supercell_of(c, repeats), rng), rng), rng), rng) for c in crystals]
    with torch.no_grad():
        before = model(make_batch(crystals, SETTINGS[name]))
        after = model(make_batch(rewritten, SETTINGS[name]))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-8)


def test_schnet_filters_from_distinct_distances_equal_filters_per_edge():
    """DeviceGraphs' batches let SchNet run its filter networks once per distinct distance of a crystal: the output and
    every gradient are those of one filter per edge (float64)."""
    rng = np.random.default_rng(5)
    crystals = [grid_crystal(rng, i) for i in range(3)] + [supercell_of(random_crystal(rng, 9), (2, 1, 1))]
    store = build_store(crystals, lambda c: c, SETTINGS["schnet"], num_workers=1, progress=False)
    distinct = DeviceGraphs(store, "cpu", distinct_distances=True).batch(np.arange(len(store)))
    assert len(distinct.distinct_distances) < len(distinct.distances) / 2  # symmetric crystals repeat their distances
    per_edge = replace(distinct, distinct_distances=None, distance_index=None)
    model = warmed_up("schnet").train()
    outputs, grads = [], []
    for batch in (distinct, per_edge):
        model.zero_grad()
        output = model(batch)
        output.pow(2).sum().backward()
        outputs.append(output.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-12)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def shell_cut_among_inequivalent_sites() -> Crystal:
    """Ti with three O at 2.0 Å: two images of O (1/2, 0, 0) along x, one of O (0, 1/3, 0) along y.

    With two neighbours per atom the cap cuts that shell, and the two O sites are not equivalent
    (different surroundings), so keeping "the first two" would depend on which O is listed first.
    """
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1 / 3, 0.0]])
    return Crystal("TiO2-cut", np.diag([4.0, 6.0, 20.0]), np.array([22, 8, 8]), frac, target=0.0)


def as_given(c: Crystal, rng) -> Crystal:
    return c


@pytest.mark.parametrize("transform", [as_given, supercell, other_cell, rotated])
def test_prediction_invariant_when_the_neighbour_cap_cuts_a_shell_of_inequivalent_sites(eval_model, transform):
    """The transform is applied to the crystal with its O sites listed the other way round, which keeping the
    first neighbours by atom index would tell apart."""
    name, model = eval_model
    settings = GraphSettings(cutoff=8.0, max_neighbors=2)
    crystal = shell_cut_among_inequivalent_sites()
    swapped = replace(crystal, numbers=crystal.numbers[[0, 2, 1]], frac_coords=crystal.frac_coords[[0, 2, 1]])
    with torch.no_grad():
        before = model(make_batch([crystal], settings))
        after = model(make_batch([transform(swapped, np.random.default_rng(1)), crystal], settings))
    torch.testing.assert_close(after, before.repeat(2), rtol=0, atol=1e-8)


def test_the_output_head_reads_the_crystal_features(eval_model):
    name, model = eval_model
    rng = np.random.default_rng(9)
    crystals = [random_crystal(rng, i) for i in range(3)]
    if name == "schnet":  # its head reads each atom before the mean: equal to reading the mean where all atoms are alike
        crystals = [replace(c, numbers=c.numbers[:1], frac_coords=c.frac_coords[:1]) for c in crystals]
    batch = make_batch(crystals, SETTINGS[name])
    with torch.no_grad():
        features = model.crystal_features(batch)
        if name == "cgcnn":
            head = model.conv_to_fc_softplus(model.conv_to_fc(model.conv_to_fc_softplus(features)))
            for fc, softplus in zip(model.fcs, model.softpluses):
                head = softplus(fc(head))
            read = model.fc_out(head).squeeze(-1)
        else:
            read = model.lin2(model.act(model.lin1(features))).squeeze(-1)
        torch.testing.assert_close(read, model(batch), rtol=0, atol=1e-10)
    assert features[0].sub(features[1]).abs().max() > 1e-4  # crystals tell apart


def test_prediction_depends_on_geometry(eval_model):
    """Control for the invariance tests: a strained crystal gets a different prediction."""
    name, model = eval_model
    crystal = random_crystal(np.random.default_rng(7))
    strained = replace(crystal, lattice=crystal.lattice * np.array([[1.1], [1.0], [1.0]]))
    with torch.no_grad():
        before = model(make_batch([crystal], SETTINGS[name]))
        after = model(make_batch([strained], SETTINGS[name]))
    assert (after - before).abs().item() > 1e-4


def test_batch_equals_single_crystals(eval_model):
    name, model = eval_model
    rng = np.random.default_rng(3)
    crystals = [random_crystal(rng, i) for i in range(3)]
    with torch.no_grad():
        together = model(make_batch(crystals, SETTINGS[name]))
        alone = torch.cat([model(make_batch([c], SETTINGS[name])) for c in crystals])
    assert together.shape == (3,)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["cgcnn", "schnet"])
def test_gradients_reach_every_parameter(name):
    model = make_model(name).train()
    rng = np.random.default_rng(5)
    batch = make_batch([random_crystal(rng, i) for i in range(4)], SETTINGS[name])
    F.mse_loss(model(batch), batch.targets).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        if param_name.endswith("fc_full.bias"):
            # bn1 subtracts the batch mean of fc_full's output, so in training mode this bias
            # (kept for the reference's parameter layout) has an exactly zero gradient.
            assert param.grad.abs().max() < 1e-10, param_name
        else:
            assert param.grad.abs().max() > 1e-8, param_name


def first_layer(name: str, model, x, edge_index, distances):
    """The model's first message-passing layer, including its residual."""
    weights = torch.ones_like(distances)
    if name == "cgcnn":
        return model.convs[0](x, edge_index, model.gaussian(distances), weights)
    return x + model.interactions[0](x, edge_index, cosine_cutoff(distances, model.cutoff), model.distance_expansion(distances))


def test_messages_flow_from_row_0_to_row_1(eval_model):
    name, model = eval_model
    width = model.embedding.out_features if name == "cgcnn" else model.embedding.embedding_dim
    x = torch.rand(3, width, dtype=torch.float64)
    edge_index = torch.tensor([[0], [1]])  # atom 0 is the neighbour j of centre atom 1
    distances = torch.tensor([2.0], dtype=torch.float64)
    with torch.no_grad():
        out = first_layer(name, model, x, edge_index, distances)
        out_j = first_layer(name, model, x + torch.tensor([[1.0], [0.0], [0.0]]), edge_index, distances)
        out_i = first_layer(name, model, x + torch.tensor([[0.0], [1.0], [0.0]]), edge_index, distances)
    assert not torch.allclose(out_j[1], out[1])  # the centre hears its neighbour
    torch.testing.assert_close(out_j[2], out[2])  # an unconnected atom does not
    torch.testing.assert_close(out_i[0], out[0])  # and the neighbour does not hear the centre


def random_graph_batch(rng: np.random.Generator, num_graphs: int = 3) -> GraphBatch:
    """Random directed edges, distances and edge weights: no symmetry that could hide a swapped edge direction."""
    sizes = rng.integers(3, 6, num_graphs)
    offsets = np.cumsum(np.r_[0, sizes[:-1]])
    edge_index = np.concatenate([o + rng.integers(0, n, (2, 4 * n)) for n, o in zip(sizes, offsets)], axis=1)
    return GraphBatch(
        atomic_numbers=torch.from_numpy(rng.choice(ELEMENTS, sizes.sum())),
        edge_index=torch.from_numpy(edge_index),
        distances=torch.from_numpy(rng.uniform(1.0, 7.5, edge_index.shape[1])),
        edge_weights=torch.from_numpy(rng.uniform(0.2, 1.0, edge_index.shape[1])),
        batch=torch.from_numpy(np.repeat(np.arange(num_graphs), sizes)),
        num_graphs=num_graphs,
    )


def mean_per_graph(values: torch.Tensor, batch) -> torch.Tensor:
    return torch.stack([values[batch.batch == g].mean(0) for g in range(batch.num_graphs)])


def naive_cgcnn(model: CGCNN, batch) -> torch.Tensor:
    """CGCNN (default Gaussians) written out as the reference does: v_i ⊕ v_j ⊕ u_ij per edge."""
    x = model.embedding(model.atom_features[batch.atomic_numbers])
    centers = 0.2 * torch.arange(41, dtype=batch.distances.dtype)  # reference: arange(0, 8 + 0.2, 0.2)
    edge_attr = torch.exp(-((batch.distances[:, None] - centers) ** 2) / 0.2**2)
    src, dst = batch.edge_index
    for conv in model.convs:
        z = conv.fc_full(torch.cat([x[dst], x[src], edge_attr], dim=1))
        z_filter, z_core = conv.bn1(z).chunk(2, dim=1)
        messages = torch.sigmoid(z_filter) * F.softplus(z_core) * batch.edge_weights[:, None]
        x = F.softplus(x + conv.bn2(torch.zeros_like(x).index_add_(0, dst, messages)))
    crys = F.softplus(model.conv_to_fc(F.softplus(mean_per_graph(x, batch))))
    if model.n_h > 1:
        for fc in model.fcs:
            crys = F.softplus(fc(crys))
    return model.fc_out(crys).squeeze(-1)


def naive_schnet(model: SchNet, batch) -> torch.Tensor:
    """SchNet with CFConv written out: filters W(d) on edges j -> i, messages summed at i."""
    h = model.embedding(batch.atomic_numbers)
    d = batch.distances
    centers = torch.linspace(0.0, model.cutoff, model.distance_expansion.offset.numel(), dtype=d.dtype)
    rbf = torch.exp(-0.5 * ((d[:, None] - centers) / (centers[1] - centers[0])) ** 2)
    envelope = 0.5 * (torch.cos(torch.pi * d / model.cutoff) + 1.0) * batch.edge_weights
    src, dst = batch.edge_index
    for block in model.interactions:
        messages = block.conv.lin1(h)[src] * block.conv.nn(rbf) * envelope[:, None]
        summed = messages.new_zeros(len(h), messages.shape[1]).index_add_(0, dst, messages)
        h = h + block.lin(block.act(block.conv.lin2(summed)))
    return mean_per_graph(model.lin2(model.act(model.lin1(h))), batch).squeeze(-1)


@pytest.mark.parametrize("train", [True, False])
def test_cgcnn_split_linear_equals_concatenation(train):
    model = warmed_up("cgcnn")
    batch = random_graph_batch(np.random.default_rng(11))
    model.train(train)
    with torch.no_grad():
        ours, naive = model(batch), naive_cgcnn(model, batch)
    torch.testing.assert_close(ours, naive, rtol=0, atol=1e-8)  # float64: the two differ by rounding only


def test_schnet_equals_written_out_cfconv():
    model = make_model("schnet")
    batch = random_graph_batch(np.random.default_rng(12))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), naive_schnet(model, batch), rtol=0, atol=1e-8)


def test_schnet_interaction_with_unit_weights_is_pygs_interaction_block():
    from torch_geometric.nn.models.schnet import InteractionBlock

    model = make_model("schnet")
    ours = model.interactions[0]
    pyg = InteractionBlock(16, 20, 16, model.cutoff).double()
    pyg.load_state_dict(ours.state_dict())
    batch = random_graph_batch(np.random.default_rng(13))
    h = model.embedding(batch.atomic_numbers)
    rbf = model.distance_expansion(batch.distances)
    with torch.no_grad():
        expected = pyg(h, batch.edge_index, batch.distances, rbf)
        got = ours(h, batch.edge_index, cosine_cutoff(batch.distances, model.cutoff), rbf)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def reference_parameter_count(orig: int, nbr: int, atom: int, n_conv: int, h: int, n_h: int) -> int:
    """Trainable parameters of the reference CrystalGraphConvNet, layer by layer."""

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    def batchnorm(features):
        return 2 * features

    conv = linear(2 * atom + nbr, 2 * atom) + batchnorm(2 * atom) + batchnorm(atom)
    return linear(orig, atom) + n_conv * conv + linear(atom, h) + (n_h - 1) * linear(h, h) + linear(h, 1)


def test_cgcnn_parameter_count_and_buffers_match_reference():
    model = CGCNN(atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1, atom_features=random_table())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == reference_parameter_count(92, 41, 64, 4, 32, 1)
    state = model.state_dict()
    assert "atom_features" in state and not any("centers" in k for k in state)
    assert not hasattr(model, "fcs")  # hidden layers only for n_h > 1, as in the reference
    assert CGCNN(n_h=3, atom_features=random_table()).fcs[1].weight.shape == (128, 128)


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="reference CGCNN checkpoint not available")
def test_cgcnn_loads_reference_checkpoint():
    with torch.serialization.safe_globals([argparse.Namespace]):  # older copies store args as a Namespace
        checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    reference, args = checkpoint["state_dict"], checkpoint["args"]
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    sizes = {k: args[k] for k in ("atom_fea_len", "n_conv", "h_fea_len", "n_h")}
    model = CGCNN(**sizes, atom_features=random_table())
    ours = {k: v.shape for k, v in model.state_dict().items() if k != "atom_features"}
    # The checkpoint predates BatchNorm's num_batches_tracked buffer.
    assert {k: s for k, s in ours.items() if not k.endswith("num_batches_tracked")} == {
        k: v.shape for k, v in reference.items()
    }
    model.load_state_dict({**reference, "atom_features": model.atom_features}, strict=True)
    model.double().eval()
    batch = make_batch([random_crystal(np.random.default_rng(13), i) for i in range(2)], SETTINGS["cgcnn"])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), naive_cgcnn(model, batch), rtol=0, atol=1e-6)


def test_cgcnn_default_table_is_the_feature_table():
    from crystal_train.data.features import cgcnn_feature_table

    table = cgcnn_feature_table()
    torch.testing.assert_close(CGCNN().atom_features, table.to(torch.get_default_dtype()))


@pytest.mark.parametrize("name", ["cgcnn", "schnet"])
def test_distance_basis_tails_are_zeros_not_denormals(name):
    """The Gaussians equal the plain exp where it matters; their far tails are exact zeros.

    Left as exp(), most of a float32 basis over 0–8 Å would be denormal numbers, which make every
    multiply-add that reads them slow on many CPUs (crystal_train/models/basis.py).
    """
    if name == "cgcnn":
        expansion = CGCNN(atom_features=random_table()).gaussian
        centers, inverse_variance = np.arange(0.0, 8.2, 0.2), 1 / 0.2**2
    else:
        expansion = SchNet(num_gaussians=50, cutoff=8.0).distance_expansion
        centers = np.linspace(0.0, 8.0, 50)
        inverse_variance = 0.5 / (centers[1] - centers[0]) ** 2
    distances = np.linspace(0.5, 8.0, 3001)
    exponent = (distances[:, None] - centers) ** 2 * inverse_variance
    smallest_normal = torch.finfo(torch.float32).tiny

    plain = torch.exp(-torch.from_numpy(exponent).float())
    assert ((plain > 0) & (plain < smallest_normal)).any()  # what the truncation is for

    values = expansion(torch.from_numpy(distances).float())
    assert values.dtype == torch.float32 and values.shape == exponent.shape
    assert not ((values > 0) & (values < smallest_normal)).any()
    reference = np.where(exponent < 60.0, np.exp(-exponent), 0.0)
    np.testing.assert_allclose(values.double().numpy(), reference, rtol=2e-4, atol=1e-25)
    assert (values[torch.from_numpy(exponent > 61.0)] == 0).all()


@pytest.mark.parametrize(
    ("name", "inner", "head"), [("cgcnn", "embedding", ("conv_to_fc", "fc_out")), ("schnet", "interactions.0.lin", ("lin1", "lin2"))]
)
def test_pooling_and_head_stay_float32_under_bf16_autocast(name, inner, head, monkeypatch):
    """A bf16 per-crystal mean would round its sum and atom count (on CUDA the count stops at 256): under autocast
    the layers before pooling run in bf16, the pooling's input and the head's layers in float32."""
    model = warmed_up(name).float()
    rng = np.random.default_rng(5)
    batch = make_batch([random_crystal(rng, i) for i in range(3)], SETTINGS[name])
    batch = replace(batch, distances=batch.distances.float())
    module = importlib.import_module(f"crystal_train.models.{name}")
    scatter, pooled, layers = module.scatter, [], {}

    def recording_scatter(src, *args, **kwargs):
        pooled.append(src.dtype)
        return scatter(src, *args, **kwargs)

    monkeypatch.setattr(module, "scatter", recording_scatter)
    def record(layer):
        def hook(_, __, output):
            layers[layer] = output.dtype

        return hook

    for layer in (inner, *head):
        model.get_submodule(layer).register_forward_hook(record(layer))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch)
    assert layers == {inner: torch.bfloat16} | {layer: torch.float32 for layer in head}
    assert pooled[-1] == torch.float32 and output.dtype == torch.float32  # the last scatter is the pooling (CGCNN's convs scatter too)
