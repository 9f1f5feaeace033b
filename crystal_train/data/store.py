"""All graphs of a dataset as a few concatenated arrays, built in parallel from raw items."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

from crystal_train.data.crystal import Crystal, SkippedItem
from crystal_train.data.graphs import CrystalGraph, GraphSettings, build_graph

SPLIT_CODES = {None: -1, "train": 0, "val": 1, "test": 2}
DISTINCT_CHUNK_EDGES = 1 << 22  # edges sorted at a time by GraphStore.distinct_distances
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


class DistinctDistances(NamedTuple):
    """Per crystal, the distinct values among its edges' distances: distances[e] == values[ptr[c] + local[e]] for an edge
    e of crystal c."""

    values: np.ndarray  # (D,) float32, each crystal's in the order of their bit patterns (ascending for positive values)
    ptr: np.ndarray  # (G+1,) int64
    local: np.ndarray  # (E,) int32, each edge's position among its crystal's values


@dataclass
class GraphStore:
    """Graphs of many crystals: per-crystal ranges into concatenated atom and edge arrays."""

    ids: list[str]
    targets: np.ndarray  # (G,) float64, NaN where unlabelled
    split_codes: np.ndarray  # (G,) int8, see SPLIT_CODES
    numbers: np.ndarray  # (N,) int16 atomic numbers
    node_ptr: np.ndarray  # (G+1,) int64
    edge_index: np.ndarray  # (2, E) int32, local atom indices within each crystal
    edge_ptr: np.ndarray  # (G+1,) int64
    distances: np.ndarray  # (E,) float32
    # Edge weights (CrystalGraph.weights) are 1 but for a few edges at a neighbour shell cut by the
    # cap (4 % of them at 12 neighbours, none without a cap), so only those are kept:
    fractional_edges: np.ndarray  # (F,) int64 positions in the edge arrays
    fractional_weights: np.ndarray  # (F,) float32 their weights
    skipped: list[tuple[str, str]] = field(default_factory=list)
    isolated_atoms: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def splits(self) -> list[str | None]:
        return [SPLIT_NAMES[int(code)] for code in self.split_codes]

    def crystals_with_isolated_atoms(self) -> np.ndarray:
        """Indices of the crystals holding an atom with no neighbour within the cutoff."""
        has_neighbour = np.zeros(len(self.numbers), dtype=bool)
        has_neighbour[self.edge_index[1].astype(np.int64) + self.node_ptr[self._owners(self.edge_ptr)]] = True
        return np.unique(self._owners(self.node_ptr)[~has_neighbour])

    def crystals_with_close_atoms(self, closer_than: float) -> np.ndarray:
        """Indices of the crystals with two atoms (or an atom and its periodic image) under `closer_than` Å apart."""
        return np.unique(self._owners(self.edge_ptr)[self.distances < closer_than])

    def _owners(self, ptr: np.ndarray) -> np.ndarray:
        """The crystal index of each atom (ptr=node_ptr) or edge (ptr=edge_ptr)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(ptr))

    @cached_property
    def distinct_distances(self) -> DistinctDistances:
        """Each crystal's edge distances without repeats (symmetry makes about a fifth of MP's distinct, per crystal).

        Found by sorting (crystal, float32 bits) integer keys, a few million edges of whole crystals at a time, so
        the memory it takes stays small beside the store (and beside every rank's under torchrun).
        """
        bits = self.distances.astype(np.float32).view(np.uint32).astype(np.int64)
        counts, local, values = np.zeros(len(self), dtype=np.int64), np.empty(bits.size, dtype=np.int32), []
        start = 0
        while start < len(self):
            # the crystals whose edges fit in one chunk (at least one crystal, however many edges it has)
            fitting = int(np.searchsorted(self.edge_ptr, self.edge_ptr[start] + DISTINCT_CHUNK_EDGES, side="right")) - 1
            stop = min(max(start + 1, fitting), len(self))
            first, last = self.edge_ptr[start], self.edge_ptr[stop]
            owner = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(self.edge_ptr[start : stop + 1]))
            distinct, inverse = np.unique(owner << 32 | bits[first:last], return_inverse=True)
            counts[start:stop] = np.bincount(distinct >> 32, minlength=stop - start)
            chunk_ptr = np.concatenate([[0], np.cumsum(counts[start:stop])])
            local[first:last] = inverse.reshape(-1) - chunk_ptr[owner]
            values.append((distinct & 0xFFFFFFFF).astype(np.uint32).view(np.float32))
            start = stop
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return DistinctDistances(np.concatenate(values) if values else np.zeros(0, np.float32), ptr, local)

    def edge_weights(self) -> np.ndarray:
        """(E,) float32 weight of every edge."""
        weights = np.ones(self.distances.size, dtype=np.float32)
        weights[self.fractional_edges] = self.fractional_weights
        return weights

    def crystal_elements(self, index: int) -> np.ndarray:
        """The sorted distinct atomic numbers of crystal `index`."""
        return np.unique(self.numbers[self.node_ptr[index] : self.node_ptr[index + 1]])

    def formulas(self, indices: np.ndarray) -> list[str]:
        """The reduced formula of each crystal at `indices` (Fe2O3 for any cell of haematite)."""
        from pymatgen.core import Composition, Element

        def formula(index: int) -> str:
            numbers, counts = np.unique(self.numbers[self.node_ptr[index] : self.node_ptr[index + 1]], return_counts=True)
            return Composition({Element.from_Z(int(z)): int(n) for z, n in zip(numbers, counts)}).reduced_formula

        return [formula(int(index)) for index in indices]

    def element_holders(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `indices`, atomic numbers): a pair for each element of each crystal at `indices`, once."""
        indices = np.asarray(indices, dtype=np.int64)
        position = np.full(len(self), -1, dtype=np.int64)
        position[indices] = np.arange(indices.size)
        owner = position[self._owners(self.node_ptr)]  # each atom's place in `indices`, or -1
        kept = owner >= 0
        pairs = np.unique(owner[kept] * 256 + self.numbers[kept].astype(np.int64))
        return pairs // 256, pairs % 256

    def element_counts(self, indices: np.ndarray) -> dict[int, int]:
        """{atomic number: how many crystals at `indices` hold it}."""
        numbers, counts = np.unique(self.element_holders(indices)[1], return_counts=True)
        return {int(z): int(n) for z, n in zip(numbers, counts)}

    def state(self) -> dict:
        """Plain tensors and lists, loadable with torch.load(weights_only=True)."""
        return {
            "ids": self.ids,
            "targets": torch.from_numpy(self.targets),
            "split_codes": torch.from_numpy(self.split_codes),
            "numbers": torch.from_numpy(self.numbers),
            "node_ptr": torch.from_numpy(self.node_ptr),
            "edge_index": torch.from_numpy(self.edge_index),
            "edge_ptr": torch.from_numpy(self.edge_ptr),
            "distances": torch.from_numpy(self.distances),
            "fractional_edges": torch.from_numpy(self.fractional_edges),
            "fractional_weights": torch.from_numpy(self.fractional_weights),
            "skipped": [list(pair) for pair in self.skipped],
            "isolated_atoms": self.isolated_atoms,
        }

    @classmethod
    def from_state(cls, state: dict) -> "GraphStore":
        arrays = {k: v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
        return cls(
            ids=list(state["ids"]),
            skipped=[tuple(pair) for pair in state["skipped"]],
            isolated_atoms=int(state["isolated_atoms"]),
            **arrays,
        )


# ----- building ---------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(to_crystal: Callable, settings: GraphSettings, supported: frozenset[int] | None) -> None:
    torch.set_num_threads(1)
    _worker_state.update(to_crystal=to_crystal, settings=settings, supported=supported)


def _init_pool_worker(parent_pid: int, *init_args) -> None:
    """_init_worker in a pool's process, which SIGTERM ends at once, as by default (a forked worker would otherwise run
    the SIGTERM handler crystal-train's main process sets, raising in the middle of a crystal and carrying on), and
    which ends when the main process does, however it ends."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_with_parent(parent_pid)
    _init_worker(*init_args)


def _end_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel send this process SIGTERM when its parent ends: a pool worker left behind by a main
    process that was killed would otherwise wait for work forever (its siblings hold the work queue open), holding
    its memory and the terminal's output. Elsewhere, nothing."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # no prctl: not Linux
        return
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _build_one(item) -> tuple[str, float, str | None, _StoredGraph | None, str | None]:
    """(id, target, split, graph or None, skip reason or None) for one raw item."""
    try:
        crystal: Crystal = _worker_state["to_crystal"](item)
        supported = _worker_state["supported"]
        if supported is not None:
            unknown = sorted({int(z) for z in crystal.numbers} - supported)
            if unknown:
                from pymatgen.core.periodic_table import Element

                names = ", ".join(Element.from_Z(z).symbol if 0 < z < 119 else str(z) for z in unknown)
                raise SkippedItem(crystal.id, f"element outside the feature table: {names}")
        if crystal.num_atoms == 0:
            raise SkippedItem(crystal.id, "no atoms")
        graph = _compact(build_graph(crystal, _worker_state["settings"]))
        return str(item.id), item.target, item.split, graph, None
    except SkippedItem as skipped:
        return skipped.item_id, float("nan"), None, None, skipped.reason
    except Exception as error:  # one broken item must never stop the others
        return str(getattr(item, "id", "?")), float("nan"), None, None, f"{type(error).__name__}: {error}"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which container CPU sets narrow), not every CPU of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_store(
    items: Sequence,
    to_crystal: Callable,
    settings: GraphSettings,
    supported_elements: frozenset[int] | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    skipped_before: Sequence[tuple[str, str]] = (),
) -> GraphStore:
    """Turn raw items into a GraphStore, in parallel over processes; bad items are skipped, listed after those the
    source skipped before (`skipped_before`, (id, reason) pairs)."""
    num_workers = num_workers or usable_cpus()
    init_args = (to_crystal, settings, supported_elements)
    bar = dict(total=len(items), desc="graphs", unit="crystal", disable=not progress, mininterval=1.0)
    threads = torch.get_num_threads()
    try:
        if num_workers <= 1 or len(items) < 200:
            _init_worker(*init_args)  # one torch thread while building here; restored below
            return _assemble(tqdm(map(_build_one, items), **bar), skipped_before)
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        # A worker that dies (killed for lack of memory) breaks this pool with an error; it would hang a Pool.
        with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_pool_worker, initargs=(os.getpid(), *init_args)) as pool:
            chunk = max(16, min(256, len(items) // (num_workers * 8) or 1))
            done = []
            try:
                return _assemble(tqdm(_counted(pool.map(_build_one, items, chunksize=chunk), done), **bar), skipped_before)
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a graph-building worker process died (most often killed by the system for lack of memory) after "
                    f"{len(done)} of {len(items)} items, before {', '.join(str(item.id) for item in items[len(done):len(done) + 3])}"
                    " or the items after them. Leave out very large structures, or free memory"
                ) from None
            except BaseException:  # Ctrl-C, SIGTERM: leaving the pool would otherwise wait for every queued chunk
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(threads)


def _counted(results: Iterable, done: list) -> Iterator:
    """`results`, appending a None to `done` for each one handed on."""
    for result in results:
        done.append(None)
        yield result


class _StoredGraph(NamedTuple):
    """What the store keeps of a CrystalGraph, in its dtypes."""

    numbers: np.ndarray
    edge_index: np.ndarray
    distances: np.ndarray
    fractional_edges: np.ndarray  # positions within this graph's edges
    fractional_weights: np.ndarray
    isolated_atoms: int


def _compact(graph: CrystalGraph) -> _StoredGraph:
    """The graph in the store's dtypes, so workers pickle back and the parent holds half as many bytes."""
    fractional = np.flatnonzero(graph.weights != 1.0)
    return _StoredGraph(
        numbers=graph.numbers.astype(np.int16),
        edge_index=graph.edge_index.astype(np.int32),
        distances=graph.distances.astype(np.float32),
        fractional_edges=fractional.astype(np.int32),
        fractional_weights=graph.weights[fractional].astype(np.float32),
        isolated_atoms=graph.isolated_atoms,
    )


def _assemble(results: Iterable, skipped_before: Sequence[tuple[str, str]]) -> GraphStore:
    ids, targets, splits, skipped = [], [], [], list(skipped_before)
    numbers, distances = _Column(np.int16, (0,)), _Column(np.float32, (0,))
    fractional_edges, fractional_weights = _Column(np.int64, (0,)), _Column(np.float32, (0,))
    edge_index = _Column(np.int32, (2, 0), axis=1)
    node_counts, edge_counts = [], []
    isolated, edges_before = 0, 0
    for item_id, target, split, graph, reason in results:
        if graph is None:
            skipped.append((item_id, reason))
            continue
        ids.append(item_id)
        targets.append(np.nan if target is None else float(target))
        splits.append(SPLIT_CODES[split])
        node_counts.append(len(graph.numbers))
        edge_counts.append(graph.distances.size)
        isolated += graph.isolated_atoms
        fractional_edges.append(graph.fractional_edges + np.int64(edges_before))
        fractional_weights.append(graph.fractional_weights)
        edges_before += graph.distances.size
        numbers.append(graph.numbers)
        edge_index.append(graph.edge_index)
        distances.append(graph.distances)
    return GraphStore(
        ids=ids,
        targets=np.array(targets, dtype=np.float64),
        split_codes=np.array(splits, dtype=np.int8),
        numbers=numbers.join(),
        node_ptr=np.r_[0, np.cumsum(node_counts, dtype=np.int64)],
        edge_index=edge_index.join(),
        edge_ptr=np.r_[0, np.cumsum(edge_counts, dtype=np.int64)],
        distances=distances.join(),
        fractional_edges=fractional_edges.join(),
        fractional_weights=fractional_weights.join(),
        skipped=skipped,
        isolated_atoms=isolated,
    )


class _Column:
    """Per-crystal arrays joined into one, with peak memory near one copy of the data.

    Each piece is copied at once into a large preallocated block, so the many small arrays never
    pile up; the blocks are then copied into the result one at a time, each freed once copied.
    """

    # above glibc's largest mmap threshold (32 MiB), so a freed block goes back to the OS
    BLOCK_BYTES = 64 << 20

    def __init__(self, dtype, shape: tuple, axis: int = 0):
        self.dtype, self.shape, self.axis = np.dtype(dtype), shape, axis
        self.blocks: list[np.ndarray] = []  # each viewed with the joined axis first
        self.filled: list[int] = []

    def _rows(self, array: np.ndarray) -> np.ndarray:
        return array if self.axis == 0 else array.swapaxes(0, self.axis)

    def append(self, piece: np.ndarray) -> None:
        piece = self._rows(piece)
        if not self.blocks or self.filled[-1] + len(piece) > len(self.blocks[-1]):
            row_bytes = self.dtype.itemsize * int(np.prod(piece.shape[1:]))
            shape = list(self.shape)
            shape[self.axis] = max(len(piece), self.BLOCK_BYTES // row_bytes)
            self.blocks.append(self._rows(np.empty(shape, dtype=self.dtype)))
            self.filled.append(0)
        start = self.filled[-1]
        self.blocks[-1][start : start + len(piece)] = piece
        self.filled[-1] = start + len(piece)

    def join(self) -> np.ndarray:
        shape = list(self.shape)
        shape[self.axis] = sum(self.filled)
        out = np.empty(shape, dtype=self.dtype)
        rows, offset = self._rows(out), 0
        while self.blocks:
            block, filled = self.blocks.pop(0), self.filled.pop(0)
            rows[offset : offset + filled] = block[:filled]
            offset += filled
        return out
