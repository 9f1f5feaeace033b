"""Train/val/test splits: seeded fractions, by composition, the source's own, and from a split file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crystal_train.data.crystal import Crystal
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.splits import SPLIT_ORDER, make_splits, split_ids
from crystal_train.data.store import build_store
from crystal_train.training import artifacts

FCC = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _store(crystals):
    return build_store(crystals, lambda c: c, GraphSettings(3.0, 12), num_workers=1, progress=False)


def _simple_store(n: int):
    rng = np.random.default_rng(0)
    return _store(
        [Crystal(f"id-{k}", np.eye(3) * 3.0, rng.integers(1, 90, size=1), np.zeros((1, 3))) for k in range(n)]
    )


def _assert_partition(splits, n):
    everything = np.concatenate([splits[name] for name in SPLIT_ORDER])
    assert sorted(everything.tolist()) == list(range(n))


@pytest.mark.parametrize(("n", "fractions"), [(200, (0.8, 0.1, 0.1)), (37, (0.6, 0.2, 0.2)), (10, (0.5, 0.0, 0.5))])
def test_fraction_split_is_seeded_partition_with_requested_sizes(n, fractions):
    store = _simple_store(n)
    splits = make_splits(store, "random", fractions, seed=5)
    _assert_partition(splits, n)
    for name, fraction in zip(SPLIT_ORDER, fractions):
        assert abs(len(splits[name]) - fraction * n) <= 1
    again = make_splits(store, "random", fractions, seed=5)
    assert all(np.array_equal(splits[name], again[name]) for name in SPLIT_ORDER)
    other = make_splits(store, "random", fractions, seed=6)
    assert not all(np.array_equal(splits[name], other[name]) for name in SPLIT_ORDER if len(splits[name]))


def test_bad_fractions_are_rejected():
    store = _simple_store(10)
    with pytest.raises(ValueError, match="fractions"):
        make_splits(store, "random", (0.8, 0.1, 0.2))


def _nacl_polymorphs_and_others():
    primitive = Crystal("nacl-2", np.array([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]]), np.array([11, 17]),
                        np.array([[0, 0, 0], [0.5, 0.5, 0.5]]))
    conventional = Crystal("nacl-8", np.eye(3) * 5.64, np.array([11] * 4 + [17] * 4),
                           np.vstack([FCC, FCC + [0.5, 0, 0]]))
    cscl_type = Crystal("nacl-cscl", np.eye(3) * 3.4, np.array([17, 11]), np.array([[0.5, 0.5, 0.5], [0, 0, 0]]))
    rng = np.random.default_rng(1)
    others = []
    for k in range(30):
        numbers = rng.integers(1, 90, size=int(rng.integers(1, 4)))
        others.append(Crystal(f"other-{k}", np.eye(3) * 4.0, numbers, rng.uniform(0, 1, size=(len(numbers), 3))))
    return [primitive, *others[:15], conventional, *others[15:], cscl_type]


@pytest.mark.parametrize("seed", range(8))
def test_composition_split_keeps_polymorphs_together(seed):
    store = _store(_nacl_polymorphs_and_others())
    splits = make_splits(store, "composition", (0.5, 0.25, 0.25), seed=seed)
    _assert_partition(splits, len(store))
    where = {store.ids[i]: name for name in SPLIT_ORDER for i in splits[name]}
    assert where["nacl-2"] == where["nacl-8"] == where["nacl-cscl"]
    assert all(len(splits[name]) for name in SPLIT_ORDER)


def test_composition_split_moves_polymorph_group_as_one_across_seeds():
    store = _store(_nacl_polymorphs_and_others())
    homes = set()
    for seed in range(20):
        splits = make_splits(store, "composition", (0.5, 0.25, 0.25), seed=seed)
        homes.add(next(name for name in SPLIT_ORDER if store.ids.index("nacl-8") in splits[name]))
    assert len(homes) > 1  # the group is placed by the seed, not pinned to one split


def test_source_split_column_is_used(compose_train_cfg, write_csv, good_rows, tmp_path):
    wanted = dict(zip([row["material_id"] for row in good_rows], ["test", "train", "val", "train", "test"]))
    for row in good_rows:
        row["split"] = wanted[row["material_id"]]
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", "data.split.fractions=[1.0,0.0,0.0]"], tmp_path)
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    got = split_ids(data.store, data.splits)
    assert got == {name: [i for i in wanted if wanted[i] == name] for name in SPLIT_ORDER}


@pytest.mark.parametrize("limit", [11, 5, 3])
def test_limit_gives_exactly_that_many_crystals_in_proportion_to_the_source_splits(limit, compose_train_cfg, write_csv, good_rows, tmp_path):
    # 8 train, 7 val, 7 test: 11 crystals are 4, 3.5 and 3.5 by proportion, which plain rounding turns into 12.
    rows = [
        {**row, "material_id": f"{row['material_id']}-{copy}", "split": split}
        for copy, split in enumerate(["train"] * 8 + ["val"] * 7 + ["test"] * 7)
        for row in good_rows[copy % 5: copy % 5 + 1]
    ]
    cfg = compose_train_cfg([f"data.snapshot={write_csv(rows)}", f"data.limit={limit}"], tmp_path)
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    sizes = {name: len(data.splits[name]) for name in SPLIT_ORDER}
    assert sum(sizes.values()) == len(data.store) == limit
    for name, size in sizes.items():
        share = limit * {"train": 8, "val": 7, "test": 7}[name] / 22
        assert abs(size - share) < 1, (name, sizes)


def test_split_file_from_previous_run_is_reused_exactly(compose_train_cfg, write_csv, good_rows, tmp_path):
    snapshot = write_csv(good_rows)
    first_cfg = compose_train_cfg([f"data.snapshot={snapshot}", "data.split.fractions=[0.6,0.2,0.2]"], tmp_path)
    first = prepare_data(first_cfg.data, graph_settings(first_cfg.graph))
    saved = split_ids(first.store, first.splits)
    saved["train"].reverse()  # the file's order is kept, not re-sorted
    artifacts.write_json(tmp_path / "split.json", saved)

    cfg = compose_train_cfg(
        [f"data.snapshot={snapshot}", f"data.split.file={tmp_path / 'split.json'}", "data.seed=99", "data.split.kind=composition"],
        tmp_path,
    )
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    assert split_ids(data.store, data.splits) == saved


def test_split_file_with_unknown_id_is_a_clear_error(compose_train_cfg, write_csv, good_rows, tmp_path):
    ids = [row["material_id"] for row in good_rows]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ids[:3], "val": [ids[3], "mp-nowhere"], "test": ids[4:]}))
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", f"data.split.file={split_file}"], tmp_path)
    with pytest.raises(ValueError, match=r"val ids are not in the data.*mp-nowhere"):
        prepare_data(cfg.data, graph_settings(cfg.graph))


def test_split_file_missing_a_split_is_a_clear_error(tmp_path):
    store = _simple_store(4)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": store.ids[:3], "val": store.ids[3:]}))
    with pytest.raises(ValueError, match="no 'test' list"):
        make_splits(store, file=split_file)


def test_split_file_listing_an_id_twice_is_a_clear_error(tmp_path):
    store = _simple_store(5)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": store.ids[:3], "val": [store.ids[2]], "test": [store.ids[3], store.ids[3]]}))
    with pytest.raises(ValueError, match=r"2 ids are listed more than once .*\['id-2', 'id-3'\]"):
        make_splits(store, file=split_file)


def test_a_split_file_may_give_whole_number_ids_as_numbers(tmp_path):
    rng = np.random.default_rng(0)
    store = _store([Crystal(str(1000041 + k), np.eye(3) * 3.0, rng.integers(1, 90, size=1), np.zeros((1, 3))) for k in range(4)])
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [1000041, 1000042], "val": ["1000043"], "test": [1000044]}))  # COD ids, hand-written
    assert {name: indices.tolist() for name, indices in make_splits(store, file=split_file).items()} == {"train": [0, 1], "val": [2], "test": [3]}


def test_unknown_split_kind_is_refused_even_when_the_source_has_a_split(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    for row, name in zip(good_rows, ["train", "train", "val", "test", "train"]):
        row["split"] = name
    snapshot = write_csv(good_rows)
    typo = compose_train_cfg([f"data.snapshot={snapshot}", "data.split.kind=compositon"], tmp_path)
    with pytest.raises(ValueError, match="unknown data.split.kind 'compositon'"):
        prepare_data(typo.data, graph_settings(typo.graph))
    cfg = compose_train_cfg([f"data.snapshot={snapshot}", "data.split.fractions=[0.1,0.1,0.8]"], tmp_path)
    with caplog.at_level("INFO"):
        data = prepare_data(cfg.data, graph_settings(cfg.graph))
    assert {name: len(indices) for name, indices in data.splits.items()} == {"train": 3, "val": 1, "test": 1}
    assert "Using the source's own split column; data.split.fractions and data.seed do not apply" in caplog.text


def test_an_explicit_composition_split_sets_the_source_split_aside(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    for row, name in zip(good_rows, ["train", "train", "val", "test", "train"]):
        row["split"] = name
    cfg = compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", "data.split.kind=composition", "data.split.fractions=[0.2,0.4,0.4]"], tmp_path)
    with caplog.at_level("INFO"):
        data = prepare_data(cfg.data, graph_settings(cfg.graph))
    assert {name: len(indices) for name, indices in data.splits.items()} == {"train": 1, "val": 2, "test": 2}
    assert "data.split.kind=composition: the source's own split column is set aside" in caplog.text


@pytest.mark.parametrize("kind", ["random", "composition"])
def test_k_folds_test_every_crystal_once_with_the_rest_split_into_train_and_val(kind):
    rng = np.random.default_rng(3)
    crystals = [Crystal(f"id-{k}", np.eye(3) * 3.0, rng.integers(1, 6, size=2), np.array([[0, 0, 0], [0.5, 0.5, 0.5]])) for k in range(103)]
    store = _store(crystals)
    runs = [make_splits(store, kind, (0.8, 0.1, 0.1), seed=4, folds=5, fold=fold) for fold in range(5)]
    for splits in runs:
        _assert_partition(splits, 103)
        assert len(splits["val"]) >= 10 and abs(len(splits["test"]) - 103 / 5) < (1 if kind == "random" else 8)
    tested = np.concatenate([splits["test"] for splits in runs])
    assert sorted(tested.tolist()) == list(range(103))  # each crystal in one test fold
    if kind == "composition":  # all polymorphs of a composition in one split
        formulas = store.formulas(np.arange(103))
        for splits in runs:
            assert not {formulas[i] for i in splits["test"]} & {formulas[i] for i in np.concatenate([splits["train"], splits["val"]])}
    assert make_splits(store, kind, (0.8, 0.1, 0.1), seed=4, folds=5, fold=2)["test"].tolist() == runs[2]["test"].tolist()  # seeded
    assert make_splits(store, kind, (0.8, 0.1, 0.1), seed=5, folds=5, fold=2)["test"].tolist() != runs[2]["test"].tolist()


@pytest.mark.parametrize(("folds", "fold", "file", "message"), [
    (1, 0, None, "data.split.folds must be a whole number of at least 2 \\(or null\\), not 1"),
    (5, 5, None, "data.split.fold must be one of 0 .. 4 for data.split.folds=5, not 5"),
    (5, 0, "split.json", "data.split.file reuses a saved split, data.split.folds makes one: give one of them"),
])
def test_bad_fold_settings_are_refused(folds, fold, file, message):
    with pytest.raises(ValueError, match=message):
        make_splits(_simple_store(10), folds=folds, fold=fold, file=file)
