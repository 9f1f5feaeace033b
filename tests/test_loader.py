"""Index-sliced batches: equal to per-crystal collation, on-device or copied from host memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from graph_utils import make_batch, random_crystals

from crystal_train.data import loader
from crystal_train.data import store as store_module
from crystal_train.data.crystal import Crystal
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.loader import BatchIterator, DeviceGraphs, fits_on_device, graph_tensor_bytes
from crystal_train.data.store import build_store
from crystal_train.training.metrics import Normalizer

SETTINGS = GraphSettings(5.0, 12)


@pytest.fixture(scope="module")
def crystals_and_store():
    crystals = random_crystals(7)
    return crystals, build_store(crystals, lambda c: c, SETTINGS, num_workers=1, progress=False)


@pytest.mark.parametrize("resident", [True, False])
def test_batches_equal_collating_the_same_crystals(crystals_and_store, resident):
    crystals, store = crystals_and_store
    graphs = DeviceGraphs(store, "cpu", resident=resident)
    indices = np.array([5, 0, 3])
    got = graphs.batch(indices)
    want = make_batch([crystals[i] for i in indices], SETTINGS, dtype=torch.float32)
    torch.testing.assert_close(got.atomic_numbers, want.atomic_numbers.long())
    torch.testing.assert_close(got.edge_index, want.edge_index.long())
    torch.testing.assert_close(got.distances, want.distances)
    torch.testing.assert_close(got.edge_weights, want.edge_weights)
    torch.testing.assert_close(got.batch, want.batch.long())
    torch.testing.assert_close(got.targets, want.targets.double())  # float64 until normalised
    assert got.num_graphs == 3


def test_non_resident_graphs_stay_on_the_host_and_batches_move_to_the_device(crystals_and_store):
    """The meta device stands in for a GPU: storage stays on the CPU, every batch tensor is moved."""
    _, store = crystals_and_store
    graphs = DeviceGraphs(store, "meta", resident=False, distinct_distances=True)
    assert not graphs.resident and graphs.distances.device.type == "cpu"
    reference = DeviceGraphs(store, "cpu", distinct_distances=True).batch(np.arange(4))
    batch = graphs.batch(np.arange(4))
    for name in ("atomic_numbers", "edge_index", "distances", "edge_weights", "batch", "targets", "distinct_distances", "distance_index"):
        moved, expected = getattr(batch, name), getattr(reference, name)
        assert moved.device.type == "meta" and moved.shape == expected.shape and moved.dtype == expected.dtype, name


def test_iterator_covers_every_crystal_once_per_epoch_in_a_new_order_each_epoch(crystals_and_store):
    _, store = crystals_and_store
    graphs = DeviceGraphs(store, "cpu", resident=False)
    iterator = BatchIterator(graphs, np.arange(len(store)), batch_size=3, shuffle=True, seed=1)
    epochs = [torch.cat([batch.targets for batch in iterator]).tolist() for _ in range(3)]  # targets are the crystals' positions
    in_order = [float(i) for i in range(len(store))]
    assert all(sorted(epoch) == in_order for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3 and in_order not in epochs
    assert len(iterator) == 3
    unshuffled = BatchIterator(graphs, np.arange(len(store)), batch_size=3)
    assert [torch.cat([batch.targets for batch in unshuffled]).tolist() for _ in range(2)] == [in_order, in_order]


@pytest.mark.parametrize("resident", [True, False])
def test_batches_carry_each_crystals_distinct_distances_and_where_each_edge_finds_its_own(resident):
    """A symmetric crystal repeats its distances; the batch lists each crystal's once, and gathering them gives every edge's."""
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    crystals = [Crystal("fcc", np.eye(3) * 3.6, np.full(4, 29), fcc), *random_crystals(3)]
    store = build_store(crystals, lambda c: c, SETTINGS, num_workers=1, progress=False)
    graphs = DeviceGraphs(store, "cpu", resident=resident, distinct_distances=True)
    assert DeviceGraphs(store, "cpu").batch(np.array([0, 1])).distance_index is None  # only for models that use them
    batch = graphs.batch(np.array([0, 1, 3, 0]))  # a crystal twice: its copies keep their own distinct distances
    torch.testing.assert_close(batch.distinct_distances[batch.distance_index], batch.distances, rtol=0, atol=0)
    edge_crystal = batch.batch[batch.edge_index[1]]
    counts = [len(torch.unique(batch.distances[edge_crystal == g])) for g in range(4)]
    assert len(batch.distinct_distances) == sum(counts)  # no value twice within a crystal
    distinct_crystal = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    assert torch.equal(distinct_crystal[batch.distance_index], edge_crystal)  # each edge points into its own crystal's
    assert counts[0] == 1 and int((edge_crystal == 0).sum()) == 48  # fcc copper: 4 atoms, each with its 12 nearest at a/√2


def test_distinct_distances_found_a_few_crystals_at_a_time_equal_those_found_at_once(crystals_and_store, monkeypatch):
    _, store = crystals_and_store
    whole = dataclasses.replace(store).distinct_distances
    monkeypatch.setattr(store_module, "DISTINCT_CHUNK_EDGES", int(np.diff(store.edge_ptr).max()) + 1)  # one or two crystals a chunk
    chunked = dataclasses.replace(store).distinct_distances
    for got, want in zip(chunked, whole):
        np.testing.assert_array_equal(got, want)
    owner = np.repeat(np.arange(len(store)), np.diff(store.edge_ptr))
    np.testing.assert_array_equal(chunked.values[chunked.ptr[owner] + chunked.local], store.distances)


def test_a_batch_size_under_one_is_refused(crystals_and_store):
    graphs = DeviceGraphs(crystals_and_store[1], "cpu")
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"the batch size must be at least 1, not {size}"):
            BatchIterator(graphs, np.arange(3), batch_size=size)


def test_targets_keep_their_spread_around_a_large_mean(crystals_and_store):
    store = dataclasses.replace(crystals_and_store[1], targets=1e9 + np.arange(7) * 0.25)  # float32 steps are 64 apart at 1e9
    normalizer = Normalizer.fit(store.targets)
    (batch,) = BatchIterator(DeviceGraphs(store, "cpu"), np.arange(len(store)), batch_size=len(store))
    np.testing.assert_allclose(normalizer.normalize(batch.targets).numpy(), normalizer.normalize(store.targets), rtol=0, atol=1e-6)


@pytest.mark.parametrize("distinct", [False, True])
def test_graph_tensor_bytes_counts_what_device_graphs_holds(crystals_and_store, distinct):
    _, store = crystals_and_store
    graphs = DeviceGraphs(store, "cpu", distinct_distances=distinct)
    held = [graphs.numbers, graphs.node_ptr, graphs.edge_ptr, graphs.node_count_t, graphs.edge_count_t,
            graphs.edge_index, graphs.distances, graphs.edge_weights, graphs.targets]
    if distinct:
        held += [graphs.distinct_values, graphs.distinct_ptr, graphs.distinct_count_t, graphs.distance_index]
    assert graph_tensor_bytes(store, distinct) == sum(t.numel() * t.element_size() for t in held)


def test_fits_on_device_uses_half_the_free_gpu_memory(monkeypatch):
    monkeypatch.setattr(loader.torch.cuda, "mem_get_info", lambda device: (1000, 4000))
    cuda = torch.device("cuda")
    assert fits_on_device(500, cuda) and not fits_on_device(501, cuda)
    assert fits_on_device(10**15, torch.device("cpu"))


def test_training_iterator_folds_a_lone_last_crystal_into_the_batch_before(crystals_and_store):
    """7 crystals in batches of 3: 3 + 3 + 1 becomes 3 + 4, so BatchNorm never sees a one-crystal batch."""
    _, store = crystals_and_store
    graphs = DeviceGraphs(store, "cpu")
    plain = BatchIterator(graphs, np.arange(7), batch_size=3, shuffle=True, seed=1)
    folded = BatchIterator(graphs, np.arange(7), batch_size=3, shuffle=True, seed=1, fold_lone_tail=True)
    assert [batch.num_graphs for batch in plain] == [3, 3, 1] and len(plain) == 3
    batches = list(folded)
    assert [batch.num_graphs for batch in batches] == [3, 4] and len(folded) == 2
    assert sorted(torch.cat([batch.targets for batch in batches]).tolist()) == [float(i) for i in range(7)]
    two_left = BatchIterator(graphs, np.arange(5), batch_size=3, fold_lone_tail=True)
    assert [batch.num_graphs for batch in two_left] == [3, 2] and len(two_left) == 2
    alone = BatchIterator(graphs, np.arange(1), batch_size=3, fold_lone_tail=True)
    assert [batch.num_graphs for batch in alone] == [1] and len(alone) == 1
