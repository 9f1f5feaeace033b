"""Train/val/test splits: the source's own, seeded fractions, by composition, or from a file."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from functools import reduce
from pathlib import Path

import numpy as np

from crystal_train.data.store import SPLIT_CODES, GraphStore

SPLIT_ORDER = ("train", "val", "test")

log = logging.getLogger(__name__)


def make_splits(
    store: GraphStore,
    kind: str = "random",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    file: str | Path | None = None,
    folds: int | None = None,
    fold: int = 0,
) -> dict[str, np.ndarray]:
    """Indices into `store` for train, val and test.

    Order of precedence: a saved split file; a split by reduced composition (`kind="composition"`,
    all polymorphs of a composition land in one split) or K-fold cross-validation (`folds`), asked for explicitly, so
    they set aside a split the source carries; the split the source carries; seeded fractions over crystals.

    With `folds`, the crystals (or compositions) in seeded order are dealt into `folds` parts of nearly equal numbers
    of crystals, the same parts for every `fold`: part `fold` is the test split, and of the others, val takes the
    `fractions` val share of all crystals, train the rest. So the K runs of one seed test every crystal once.
    """
    if kind not in ("random", "composition"):
        raise ValueError(f"unknown data.split.kind {kind!r}: use random or composition")
    if folds is not None:
        check_folds(folds, fold, file)
    if file is not None:
        return _from_file(store, Path(file))
    codes = store.split_codes
    if (kind == "composition" or folds is not None) and (codes >= 0).any():
        log.info("data.split.%s: the source's own split column is set aside", "kind=composition" if folds is None else f"folds={folds}")
    elif (codes >= 0).all() and len(codes):
        log.info("Using the source's own split column; data.split.fractions and data.seed do not apply (data.split.kind=composition or data.split.folds would set it aside)")
        return {name: np.flatnonzero(codes == SPLIT_CODES[name]) for name in SPLIT_ORDER}
    elif (codes >= 0).any():
        missing = [store.ids[i] for i in np.flatnonzero(codes < 0)[:5]]
        raise ValueError(f"the source's split column is empty for some crystals, e.g. {missing}")
    if len(fractions) != 3 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6) or min(fractions) < 0:
        raise ValueError(f"data.split.fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    groups = [[i] for i in range(len(store))] if kind == "random" else _composition_groups(store)
    order = rng.permutation(len(groups))
    if folds is not None:
        return _k_fold(order, groups, int(folds), int(fold), fractions[1])
    return _assign(order, groups, fractions)


def check_folds(folds, fold, file) -> None:
    """ValueError naming the setting unless data.split.folds is 2 or more, fold one of its parts, and no split file is given."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"data.split.folds must be a whole number of at least 2 (or null), not {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be one of 0 .. {folds - 1} for data.split.folds={folds}, not {fold!r}")
    if file is not None:
        raise ValueError("data.split.file reuses a saved split, data.split.folds makes one: give one of them")


def _k_fold(order, groups, folds: int, fold: int, val_fraction: float) -> dict[str, np.ndarray]:
    """Deal the groups in `order` into the part with the fewest crystals so far; part `fold` is test, and the other
    parts' groups, in `order`, fill val to `val_fraction` of all crystals, then train."""
    sizes, part = [0] * folds, {}
    for position in order:
        part[position] = int(np.argmin(sizes))
        sizes[part[position]] += len(groups[position])
    wanted_val = round(val_fraction * sum(sizes))
    result = {"train": [], "val": [], "test": []}
    for position in order:
        name = "test" if part[position] == fold else "val" if len(result["val"]) < wanted_val else "train"
        result[name].extend(groups[position])
    return {name: np.sort(np.array(result[name], dtype=np.int64)) for name in SPLIT_ORDER}


def _assign(order, groups, fractions) -> dict[str, np.ndarray]:
    """Fill test, then val, with whole groups in `order`; the rest is train."""
    total = sum(len(g) for g in groups)
    wanted = {"test": round(fractions[2] * total), "val": round(fractions[1] * total)}
    result = {"train": [], "val": [], "test": []}
    filling = ["test", "val"]
    for position in order:
        members = groups[position]
        while filling and len(result[filling[0]]) >= wanted[filling[0]]:
            filling.pop(0)
        result[filling[0] if filling else "train"].extend(members)
    return {name: np.sort(np.array(result[name], dtype=np.int64)) for name in SPLIT_ORDER}


def _composition_groups(store: GraphStore) -> list[list[int]]:
    """Crystal indices grouped by reduced composition, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for index in range(len(store)):
        numbers = store.numbers[store.node_ptr[index] : store.node_ptr[index + 1]]
        elements, counts = np.unique(numbers, return_counts=True)
        divisor = reduce(math.gcd, counts.tolist())
        key = tuple(zip(elements.tolist(), (counts // divisor).tolist()))
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _from_file(store: GraphStore, path: Path) -> dict[str, np.ndarray]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read split file {path}: {error}") from None
    return splits_from_ids(store, saved, origin=f"split file {path}")


def splits_from_ids(store: GraphStore, saved: dict[str, list[str]], origin: str = "saved split") -> dict[str, np.ndarray]:
    """Indices of exactly the saved ids in each split; an error names ids missing from the data or listed twice.

    Ids are text: a whole number in a hand-written split file (a CGCNN folder's COD id, 1000041) is read as its digits."""
    position = {item_id: i for i, item_id in enumerate(store.ids)}
    splits = {}
    for name in SPLIT_ORDER:
        if name not in saved:
            raise ValueError(f"{origin} has no {name!r} list")
    saved = {name: [_as_id(item_id) for item_id in saved[name]] for name in SPLIT_ORDER}
    listed = [item_id for name in SPLIT_ORDER for item_id in saved[name]]
    repeated = sorted({item_id for item_id, count in Counter(listed).items() if count > 1})
    if repeated:
        raise ValueError(f"{origin}: {len(repeated)} ids are listed more than once (within or across splits), e.g. {repeated[:5]}")
    for name in SPLIT_ORDER:
        missing = [item_id for item_id in saved[name] if item_id not in position]
        if missing:
            raise ValueError(f"{origin}: {len(missing)} {name} ids are not in the data, e.g. {missing[:5]}")
        splits[name] = np.array([position[item_id] for item_id in saved[name]], dtype=np.int64)
    return splits


def _as_id(item_id):
    return str(item_id) if isinstance(item_id, int) and not isinstance(item_id, bool) else item_id


def split_ids(store: GraphStore, splits: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The ids in each split, as written to split.json."""
    return {name: [store.ids[i] for i in splits[name]] for name in SPLIT_ORDER}
