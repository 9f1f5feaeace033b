"""Batches made by index slicing of whole-dataset tensors kept on the training device."""

from __future__ import annotations

import math

import numpy as np
import torch

from crystal_train.data.batch import GraphBatch
from crystal_train.data.store import GraphStore


DEVICE_MEMORY_FRACTION = 0.5  # of the free device memory the dataset may take; the rest is for the model


def fits_on_device(num_bytes: int, device: torch.device, fraction: float = DEVICE_MEMORY_FRACTION) -> bool:
    """Whether `num_bytes` of graph tensors should live on `device` (always, for the CPU)."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # blocks PyTorch caches are free to it
    return num_bytes <= fraction * free


class DeviceGraphs:
    """A GraphStore's arrays as tensors, sliced into batches on `device` without Python loops.

    The arrays live on the training device when they fit (`resident=None` decides by free
    device memory); otherwise they stay in host memory and each batch is gathered there, pinned
    and copied over asynchronously (pinning the whole dataset would lock up to twice its size in
    the pinned-memory cache). Per-crystal counts are kept on the host too, so the batch sizes are
    known without a device synchronisation. With `distinct_distances` (for models that use them,
    `uses_distinct_distances`) batches also carry each crystal's distinct distances and an index per edge.
    """

    def __init__(
        self,
        store: GraphStore,
        device: torch.device | str = "cpu",
        resident: bool | None = None,
        distinct_distances: bool = False,
    ):
        device = torch.device(device)
        if resident is None:
            resident = fits_on_device(graph_tensor_bytes(store, distinct_distances), device)
        storage = device if resident else torch.device("cpu")

        def put(array, dtype):
            return torch.as_tensor(np.ascontiguousarray(array)).to(dtype).to(storage)

        self.device = device
        self.storage_device = storage
        self.num_crystals = len(store)
        self.node_counts = np.diff(store.node_ptr)
        self.edge_counts = np.diff(store.edge_ptr)
        self.numbers = put(store.numbers, torch.long)
        self.node_ptr = put(store.node_ptr[:-1], torch.long)
        self.edge_ptr = put(store.edge_ptr[:-1], torch.long)
        self.node_count_t = put(self.node_counts, torch.long)
        self.edge_count_t = put(self.edge_counts, torch.long)
        self.edge_index = put(store.edge_index, torch.int32)  # local indices; widened per batch
        self.distances = put(store.distances, torch.float32)
        self.edge_weights = put(store.edge_weights(), torch.float32)
        self.targets = put(np.nan_to_num(store.targets, nan=0.0), torch.float64)  # float32 would round away a spread around a large mean
        self.distinct_distances = distinct_distances
        if distinct_distances:
            distinct = store.distinct_distances
            self.distinct_counts = np.diff(distinct.ptr)
            self.distinct_values = put(distinct.values, torch.float32)
            self.distinct_ptr = put(distinct.ptr[:-1], torch.long)
            self.distinct_count_t = put(self.distinct_counts, torch.long)
            self.distance_index = put(distinct.local, torch.int32)  # local to each crystal; widened per batch

    @property
    def resident(self) -> bool:
        """True when the dataset's tensors live on the training device."""
        return self.storage_device == self.device

    def upload(self, indices: np.ndarray) -> torch.Tensor:
        """Crystal indices as a tensor where the arrays live (one transfer, e.g. per epoch)."""
        return torch.as_tensor(np.ascontiguousarray(indices), dtype=torch.long).to(self.storage_device)

    def batch(self, indices: np.ndarray, index: torch.Tensor | None = None) -> GraphBatch:
        """The GraphBatch of the crystals at `indices` (a host array; `index` is the same, uploaded).

        Sizes come from host-side counts, so no device synchronisation happens here.
        """
        num_nodes = int(self.node_counts[indices].sum())
        num_edges = int(self.edge_counts[indices].sum())
        if index is None:
            index = self.upload(indices)
        node_counts = self.node_count_t[index]
        edge_counts = self.edge_count_t[index]
        node_ids, node_owner = _concat_ranges(self.node_ptr[index], node_counts, num_nodes)
        edge_ids, edge_owner = _concat_ranges(self.edge_ptr[index], edge_counts, num_edges)
        first_node = torch.cumsum(node_counts, 0) - node_counts
        edge_index = self.edge_index[:, edge_ids].long() + first_node[edge_owner]
        tensors = (
            self.numbers[node_ids], edge_index, self.distances[edge_ids], self.edge_weights[edge_ids], node_owner, self.targets[index],
            *(self._distinct(indices, index, edge_ids, edge_owner) if self.distinct_distances else (None, None)),
        )
        if not self.resident:
            pin = self.device.type == "cuda"  # an asynchronous copy needs page-locked memory
            tensors = tuple(None if t is None else (t.pin_memory() if pin else t).to(self.device, non_blocking=True) for t in tensors)
        numbers, edge_index, distances, weights, owner, targets, distinct_distances, distance_index = tensors
        return GraphBatch(
            atomic_numbers=numbers,
            edge_index=edge_index,
            distances=distances,
            edge_weights=weights,
            batch=owner,
            num_graphs=len(indices),
            targets=targets,
            distinct_distances=distinct_distances,
            distance_index=distance_index,
        )

    def _distinct(self, indices: np.ndarray, index: torch.Tensor, edge_ids: torch.Tensor, edge_owner: torch.Tensor):
        """The batch's distinct distances, crystal after crystal, and each edge's position among them."""
        counts = self.distinct_count_t[index]
        distinct_ids, _ = _concat_ranges(self.distinct_ptr[index], counts, int(self.distinct_counts[indices].sum()))
        distance_index = self.distance_index[edge_ids].long() + (torch.cumsum(counts, 0) - counts)[edge_owner]
        return self.distinct_values[distinct_ids], distance_index


def graph_tensor_bytes(store: GraphStore, distinct_distances: bool = False) -> int:
    """Bytes DeviceGraphs takes for `store`: int64 atoms, pointers and counts, int32 edges, float32 distances and
    weights, float64 targets; with `distinct_distances`, also float32 distinct distances with int64 pointers and
    counts, and an int32 index per edge."""
    crystals, atoms, edges = len(store), len(store.numbers), int(store.edge_ptr[-1])
    held = 8 * atoms + 8 * 4 * crystals + 4 * 2 * edges + 4 * 2 * edges + 8 * crystals
    if distinct_distances:
        held += 4 * len(store.distinct_distances.values) + 8 * 2 * crystals + 4 * edges
    return held


def _concat_ranges(starts: torch.Tensor, counts: torch.Tensor, total: int):
    """(concatenated arange(s, s+c), owner of each element), with the total given by the caller."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    positions = torch.arange(total, device=counts.device) - offsets[owner]
    return starts[owner] + positions, owner


class BatchIterator:
    """Iterates over batches of the given crystal indices, shuffled each epoch when asked.

    With world_size > 1 each rank takes every world_size-th crystal of the (identically seeded)
    order, as torch's DistributedSampler does; `pad` repeats a few crystals so every rank gets
    the same number of batches (needed for training, not for validation). `fold_lone_tail` folds
    a last batch of a single crystal into the batch before it: in training mode, BatchNorm cannot
    normalise a batch of one atom, and a one-crystal step is mostly noise anyway.
    """

    def __init__(
        self,
        graphs: DeviceGraphs,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        fold_lone_tail: bool = False,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"the batch size must be at least 1, not {batch_size}")
        self.graphs = graphs
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.fold_lone_tail = fold_lone_tail

    def _shard(self, order: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return order
        if self.pad and len(order) % self.world_size:
            order = np.resize(order, math.ceil(len(order) / self.world_size) * self.world_size)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        count = len(self.indices)
        if self.world_size > 1:
            count = math.ceil(count / self.world_size) if self.pad else len(range(self.rank, count, self.world_size))
        return len(self._starts(count))

    def _starts(self, count: int) -> list[int]:
        """Where each batch of `count` ordered crystals begins."""
        starts = list(range(0, count, self.batch_size))
        if self.fold_lone_tail and len(starts) > 1 and count - starts[-1] == 1:
            starts.pop()
        return starts

    def __iter__(self):
        order = self._shard(self.rng.permutation(self.indices) if self.shuffle else self.indices)
        order_on_device = self.graphs.upload(order)
        starts = self._starts(len(order))
        for start, stop in zip(starts, [*starts[1:], len(order)]):
            yield self.graphs.batch(order[start:stop], order_on_device[start:stop])
