"""The graph cache: keys, rebuild versus reload, one build under concurrency, and store round trips."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal_train.data import dataset
from crystal_train.atomic_file import atomic_torch_save
from crystal_train.data.cache import cache_key, load_or_build
from crystal_train.data.crystal import Crystal, SkippedItem
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data import store as store_module
from crystal_train.data.graphs import GraphSettings, build_graph
from crystal_train.data.store import GraphStore, build_store

CACHE_LOGGER = "crystal_train.data.cache"


def _cache_files(cfg) -> list[Path]:
    return sorted((Path(cfg.data.cache_dir) / "graphs").glob("graphs-*.pt"))


def _prepare(cfg):
    return prepare_data(cfg.data, graph_settings(cfg.graph))


def _messages(caplog) -> list[str]:
    return [r.getMessage().split(":")[0] for r in caplog.records if r.name == CACHE_LOGGER]


@pytest.fixture
def snapshot(write_csv, good_rows) -> Path:
    return write_csv(good_rows)


def test_changed_cutoff_builds_new_cache_and_same_settings_reload(compose_train_cfg, snapshot, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    cfg8 = compose_train_cfg([f"data.snapshot={snapshot}"], tmp_path)
    cfg6 = compose_train_cfg([f"data.snapshot={snapshot}", "graph.cutoff=4.0"], tmp_path)

    first = _prepare(cfg8)
    assert _messages(caplog) == ["Graph cache built"]
    assert len(_cache_files(cfg8)) == 1

    smaller = _prepare(cfg6)
    assert _messages(caplog) == ["Graph cache built"] * 2
    assert len(_cache_files(cfg8)) == 2
    assert smaller.store.distances.max() <= 4.0 < first.store.distances.max()

    again = _prepare(cfg8)
    assert _messages(caplog) == ["Graph cache built"] * 2 + ["Graph cache loaded"]
    assert len(_cache_files(cfg8)) == 2
    np.testing.assert_array_equal(again.store.distances, first.store.distances)


def test_same_settings_do_not_call_build_store_again(compose_train_cfg, snapshot, tmp_path, monkeypatch):
    calls = []
    real = dataset.build_store

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "build_store", counting)
    for overrides in ([], [], ["graph.max_neighbors=null"], ["graph.max_neighbors=null"], []):
        _prepare(compose_train_cfg([f"data.snapshot={snapshot}", *overrides], tmp_path))
    assert calls == [GraphSettings(8.0, 12), GraphSettings(8.0, None)]


def test_data_seed_changes_the_key_only_when_it_picks_a_subset(compose_train_cfg, snapshot, tmp_path):
    """data.seed re-draws the split of every crystal (graphs unchanged) but a data.limit subset too."""
    whole = [_prepare(compose_train_cfg([f"data.snapshot={snapshot}", f"data.seed={seed}"], tmp_path)) for seed in (0, 1)]
    assert len(_cache_files(compose_train_cfg([], tmp_path))) == 1 and len(whole[1].store) == 5
    subsets = [_prepare(compose_train_cfg([f"data.snapshot={snapshot}", "data.limit=3", f"data.seed={seed}"], tmp_path)) for seed in range(4)]
    assert len({tuple(subset.store.ids) for subset in subsets}) > 1  # the seed does pick other crystals
    assert len(_cache_files(compose_train_cfg([], tmp_path))) == 5


def test_changed_target_changes_key(compose_train_cfg, snapshot, tmp_path):
    cfg = compose_train_cfg([f"data.snapshot={snapshot}"], tmp_path)
    formation = _prepare(cfg)
    gap = _prepare(compose_train_cfg([f"data.snapshot={snapshot}", "data=mp_gap"], tmp_path))
    assert len(_cache_files(cfg)) == 2
    assert not np.array_equal(formation.store.targets, gap.store.targets)


def test_changed_source_content_changes_key(compose_train_cfg, write_csv, good_rows, tmp_path):
    path = write_csv(good_rows)
    cfg = compose_train_cfg([f"data.snapshot={path}"], tmp_path)
    before = _prepare(cfg)
    good_rows[0]["formation_energy_per_atom"] = 42.0
    write_csv(good_rows)
    after = _prepare(cfg)
    assert len(_cache_files(cfg)) == 2
    assert after.store.targets[after.store.ids.index(good_rows[0]["material_id"])] == 42.0
    assert 42.0 not in before.store.targets


def test_cache_key_depends_on_every_part():
    base = dict(source="abc", target="formation_energy_per_atom", graph=GraphSettings(8.0, 12).key())
    key = cache_key(**base)
    assert key == cache_key(**dict(reversed(list(base.items()))))
    variants = [
        {**base, "source": "abd"},
        {**base, "target": "band_gap"},
        {**base, "graph": GraphSettings(8.0, None).key()},
        {**base, "graph": GraphSettings(7.5, 12).key()},
        {**base, "limit": 100},
    ]
    keys = {cache_key(**variant) for variant in variants}
    assert key not in keys and len(keys) == len(variants)


def test_cache_key_changes_with_the_graph_version(monkeypatch):
    """Graphs built by an older build_graph are never loaded as current ones."""
    from crystal_train.data import cache

    parts = dict(source="abc", target="formation_energy_per_atom", graph=GraphSettings(8.0, 12).key())
    key = cache_key(**parts)
    monkeypatch.setattr(cache, "GRAPH_VERSION", cache.GRAPH_VERSION - 1)
    assert cache_key(**parts) != key


def _tiny_store(tag: float) -> GraphStore:
    crystal = Crystal("c", np.eye(3) * 3.0, np.array([26]), np.zeros((1, 3)), target=tag)
    return build_store([crystal], lambda c: c, GraphSettings(4.0, 12), num_workers=1, progress=False)


def _slow_build(marker: Path) -> GraphStore:
    with open(marker, "a") as handle:
        handle.write(f"{mp.current_process().pid}\n")
    time.sleep(0.5)
    return _tiny_store(1.0)


def _race(cache_dir: Path, marker: Path, barrier, results) -> None:
    barrier.wait()
    store = load_or_build(cache_dir, "samekey", lambda: _slow_build(marker))
    results.put((len(store), store.targets.tolist(), store.distances.tolist()))


def test_concurrent_processes_build_once(tmp_path):
    context = mp.get_context("fork")
    marker = tmp_path / "builds.txt"
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_race, args=(tmp_path, marker, barrier, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(marker.read_text().splitlines()) == 1
    assert outcomes[0][0] == 1 and outcomes.count(outcomes[0]) == len(outcomes)
    assert [p.name for p in tmp_path.glob("graphs-*.pt")] == ["graphs-samekey.pt"]


def test_failed_build_leaves_no_cache_file(tmp_path):
    def broken() -> GraphStore:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        load_or_build(tmp_path, "k", broken)
    assert not list(tmp_path.glob("graphs-*.pt")) and not list(tmp_path.glob(".graphs-*"))
    (tmp_path / ".graphs-k.pt.abc123.tmp").write_bytes(b"half a cache")  # a build killed while saving
    (tmp_path / ".graphs-other.pt.abc123.tmp").write_bytes(b"another key's, perhaps being written now")
    assert len(load_or_build(tmp_path, "k", lambda: _tiny_store(2.0))) == 1
    assert [path.name for path in tmp_path.glob(".graphs-*")] == [".graphs-other.pt.abc123.tmp"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not a store"])
def test_a_damaged_cache_file_is_named_and_built_again(tmp_path, caplog, damage):
    load_or_build(tmp_path, "k", lambda: _tiny_store(2.0))
    path = tmp_path / "graphs-k.pt"
    content = path.read_bytes()
    damaged = {"truncated": content[: len(content) // 2], "empty": b"", "garbage": b"\x80\x04garbage"}
    if damage == "not a store":
        torch.save({"ids": ["x"]}, path)
    else:
        path.write_bytes(damaged[damage])
    with caplog.at_level("WARNING", logger=CACHE_LOGGER):
        rebuilt = load_or_build(tmp_path, "k", lambda: _tiny_store(3.0))
    assert f"Graph cache {path} cannot be read" in caplog.text and "building it again" in caplog.text
    assert rebuilt.targets.tolist() == _tiny_store(3.0).targets.tolist()
    assert load_or_build(tmp_path, "k", lambda: _tiny_store(4.0)).targets.tolist() == rebuilt.targets.tolist()  # saved again


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")])
def test_a_cache_that_cannot_be_loaded_for_want_of_memory_is_kept(tmp_path, monkeypatch, error):
    load_or_build(tmp_path, "k", lambda: _tiny_store(2.0))

    def short_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", short_of_memory)
    with pytest.raises(type(error)):
        load_or_build(tmp_path, "k", lambda: _tiny_store(3.0))
    monkeypatch.undo()
    assert load_or_build(tmp_path, "k", lambda: _tiny_store(4.0)).targets.tolist() == _tiny_store(2.0).targets.tolist()  # not rebuilt


def _crystals():
    rng = np.random.default_rng(0)
    for n in range(5):
        yield Crystal(
            f"c{n}",
            np.diag(rng.uniform(3.0, 5.0, size=3)),
            rng.integers(1, 50, size=n + 1),
            rng.uniform(0, 1, size=(n + 1, 3)),
            target=float(n),
            split=["train", "val", "test", "train", "val"][n],
        )


def _to_crystal(crystal: Crystal) -> Crystal:
    if crystal.id == "c3":
        raise SkippedItem("c3", "deliberately bad")
    return crystal


def _assert_stores_equal(a: GraphStore, b: GraphStore) -> None:
    assert a.ids == b.ids
    assert a.skipped == b.skipped
    assert a.isolated_atoms == b.isolated_atoms
    for name in ("targets", "split_codes", "numbers", "node_ptr", "edge_index", "edge_ptr", "distances", "fractional_edges", "fractional_weights"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype, name
        np.testing.assert_array_equal(left, right, err_msg=name)


def test_saved_store_loads_equal(tmp_path):
    store = build_store(list(_crystals()), _to_crystal, GraphSettings(5.0, 12), num_workers=1, progress=False)
    assert store.ids == ["c0", "c1", "c2", "c4"]
    assert store.skipped == [("c3", "deliberately bad")]
    assert store.distances.size > 0
    path = tmp_path / "store.pt"
    atomic_torch_save(store.state(), path)
    _assert_stores_equal(GraphStore.from_state(torch.load(path, weights_only=True)), store)


def test_load_or_build_returns_equal_store_when_loading(tmp_path):
    def build() -> GraphStore:
        return build_store(list(_crystals()), _to_crystal, GraphSettings(5.0, None), num_workers=1, progress=False)

    built = load_or_build(tmp_path, "k", build)
    loaded = load_or_build(tmp_path, "k", lambda: pytest.fail("built twice"))
    _assert_stores_equal(loaded, built)
    assert loaded.splits == ["train", "val", "test", "val"]
    assert loaded.fractional_edges.size == 0 and (loaded.edge_weights() == 1).all()  # no cap, no weights stored


def test_store_assembly_matches_each_graph_whatever_the_block_size(monkeypatch):
    crystals = [c for c in _crystals() if c.id != "c3"]
    settings = GraphSettings(5.0, 3)  # a small cap, so some edge weights are fractions
    monkeypatch.setattr(store_module._Column, "BLOCK_BYTES", 64)  # a new block every few crystals
    store = build_store(crystals, lambda c: c, settings, num_workers=1, progress=False)
    assert (store.numbers.dtype, store.edge_index.dtype, store.distances.dtype) == (np.int16, np.int32, np.float32)
    assert (store.fractional_edges.dtype, store.fractional_weights.dtype) == (np.int64, np.float32)
    assert (store.edge_weights() < 1).any()
    for n, crystal in enumerate(crystals):
        graph = build_graph(crystal, settings)
        nodes = slice(store.node_ptr[n], store.node_ptr[n + 1])
        edges = slice(store.edge_ptr[n], store.edge_ptr[n + 1])
        np.testing.assert_array_equal(store.numbers[nodes], graph.numbers)
        np.testing.assert_array_equal(store.edge_index[:, edges], graph.edge_index)
        np.testing.assert_allclose(store.distances[edges], graph.distances, rtol=1e-7)
        np.testing.assert_allclose(store.edge_weights()[edges], graph.weights, rtol=1e-7)


def test_building_in_process_keeps_torch_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_store(list(_crystals()), _to_crystal, GraphSettings(5.0, 12), num_workers=1, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_new_reader_version_builds_a_new_cache(compose_train_cfg, snapshot, tmp_path, monkeypatch):
    """Caches built by an older reader (which read some sources differently) are not loaded."""
    from crystal_train.data import dataset

    cfg = compose_train_cfg([f"data.snapshot={snapshot}"], tmp_path)
    _prepare(cfg)
    monkeypatch.setattr(dataset, "READER_VERSION", dataset.READER_VERSION + 1)
    _prepare(cfg)
    assert len(_cache_files(cfg)) == 2


def test_a_new_subset_draw_rebuilds_limited_caches_only(compose_train_cfg, snapshot, tmp_path, monkeypatch):
    """A data.limit subset drawn the older way is not loaded; the full data's cache is kept."""
    from crystal_train.data import dataset

    full, limited = (compose_train_cfg([f"data.snapshot={snapshot}", *extra], tmp_path) for extra in ([], ["data.limit=3"]))
    _prepare(full), _prepare(limited)
    monkeypatch.setattr(dataset, "SUBSET_DRAW_VERSION", dataset.SUBSET_DRAW_VERSION + 1)
    _prepare(full)
    assert len(_cache_files(full)) == 2
    _prepare(limited)
    assert len(_cache_files(full)) == 3


def _dies_on_c150(crystal: Crystal) -> Crystal:
    if crystal.id == "c150":
        os._exit(9)  # as a worker killed for lack of memory
    return crystal


def _many_crystals() -> list[Crystal]:
    rng = np.random.default_rng(0)
    return [Crystal(f"c{k}", np.eye(3) * rng.uniform(3, 4), rng.choice([3, 8, 26], size=2), rng.random((2, 3))) for k in range(240)]


def test_worker_processes_build_what_one_process_builds_and_a_dead_worker_is_an_error_not_a_hang():
    crystals, settings = _many_crystals(), GraphSettings(4.0, 6)
    parallel = build_store(crystals, lambda c: c, settings, num_workers=2, progress=False)
    serial = build_store(crystals, lambda c: c, settings, num_workers=1, progress=False)
    assert parallel.ids == serial.ids and np.array_equal(parallel.edge_ptr, serial.edge_ptr)
    np.testing.assert_array_equal(parallel.distances, serial.distances)
    with pytest.raises(RuntimeError, match=r"a graph-building worker process died .* after \d+ of 240 items, before c\d+"):
        build_store(crystals, _dies_on_c150, settings, num_workers=2, progress=False)
