"""From a `data` config to cached graphs and splits: the one data path of train, eval and predict."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from omegaconf import OmegaConf

from crystal_train.data.cache import cache_key, load_or_build
from crystal_train.data.features import builtin_elements
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.splits import make_splits
from crystal_train.data.store import GraphStore, build_store
from crystal_train.listing import first_few

log = logging.getLogger(__name__)

FEATURES_VERSION = "cgcnn-elements-v1"
# How sources are read (sources.py, cif.py), part of every graph cache's key: bump it when reading
# yields other items or reasons, so caches built by the older reader are rebuilt (2: a CIF of
# several structures is skipped, a split column named in any case, such as "Split", is read and
# must agree with a split folder's file names, and skip reasons say why pymatgen dropped a CIF block;
# 3: a CIF whose formula lists elements no atom site holds, and a POSCAR without element names, are skipped;
# 4: a CIF of two blocks with atoms is skipped also when they share a name, or one is unreadable; the reasons for
# partial occupancy and coinciding sites name the site first and lead with their kind).
READER_VERSION = 4
# How a data.limit subset is drawn, part of the key of limited caches only (2: exactly `limit`
# crystals; plain rounding within each split could give one more or fewer).
SUBSET_DRAW_VERSION = 2

WHOLE_SOURCE = "source"  # the one entry of prepare_data(whole=True), as metrics.json names it
SHOWN_KINDS = 6  # skip reasons named in the log line; skipped.csv lists every item's
# Å; atoms closer than this get a warning: shorter than any bond, so the structure is likely broken.
CLOSE_ATOMS = 0.5

# Units of the Materials Project (and matbench) targets, used when data.units is null.
KNOWN_UNITS = {
    "formation_energy_per_atom": "eV/atom",
    "energy_per_atom": "eV/atom",
    "free_energy_per_atom": "eV/atom",  # as an extended XYZ file's or ASE database's calculator results give it (ASE: eV)
    "energy_above_hull": "eV/atom",
    "band_gap": "eV",
    "e_form": "eV/atom",
    "gap pbe": "eV",
}


@dataclass
class PreparedData:
    store: GraphStore
    splits: dict[str, np.ndarray]
    target: str
    units: str
    source: str  # a human-readable description of where the crystals came from


@dataclass
class _SourcePlan:
    fingerprint: str
    target: str
    description: str
    read: Callable[[], tuple[Sequence, Callable, list[tuple[str, str]]]]  # (items, to_crystal, skipped)


def graph_settings(cfg) -> GraphSettings:
    """GraphSettings from the `graph` config block."""
    max_neighbors = cfg.get("max_neighbors")
    return GraphSettings(cutoff=float(cfg["cutoff"]), max_neighbors=None if max_neighbors is None else int(max_neighbors))


def default_cache_dir() -> Path:
    from crystal_train.data.materials_project import default_cache_dir as mp_default

    return mp_default()


def prepare_data(
    data_cfg, settings: GraphSettings, num_workers: int | None = None, progress: bool = True, elements: frozenset[int] | None = None,
    whole: bool = False,
) -> PreparedData:
    """Find the configured source's graph cache (or read the source and build it), then split it (`whole`: every
    crystal in one entry, WHOLE_SOURCE, whatever split the source or the settings have).

    The cache key needs only a hash of the source's bytes, so a cached dataset is never re-read.
    `progress=False` hides the graph build's progress bar. Crystals with an element outside
    `elements` (default: the built-in CGCNN table's) are skipped.
    """
    limit, seed = data_cfg.get("limit"), int(data_cfg.get("seed", 0))
    if limit is not None and int(limit) < 1:
        raise ValueError(f"data.limit={limit}: give a positive number of crystals, or null for all of them")
    cache_dir = Path(data_cfg.get("cache_dir") or default_cache_dir())
    source = _plan_source(data_cfg, cache_dir)
    builtin = builtin_elements()
    elements = builtin if elements is None else frozenset(elements)
    key = cache_key(
        source=source.fingerprint, target=source.target, limit=limit, seed=seed if limit is not None else None,  # seed picks the subset only
        graph=settings.key(), features=FEATURES_VERSION if elements == builtin else [FEATURES_VERSION, sorted(elements)],
        reader=READER_VERSION, **({"subset_draw": SUBSET_DRAW_VERSION} if limit is not None else {}),  # full caches keep their keys
    )

    def build() -> GraphStore:
        items, to_crystal, skipped = source.read()
        return build_store(
            _limit(items, limit, seed), to_crystal, settings, elements, num_workers=num_workers, progress=progress, skipped_before=skipped
        )

    store = load_or_build(cache_dir / "graphs", key, build)
    report_skipped(store)
    if len(store) == 0:
        raise ValueError(f"no valid crystals remain in {source.description}; see the skipped reasons above")
    check_target_floor(store, source.target, data_cfg.get("target_min"))
    target, units = source.target, target_units(source.target, data_cfg.get("units"))
    if str(data_cfg.get("task", "regression")) == "classification":
        store.targets, target = class_labels(store, source.target, data_cfg.get("positive_at_most"))
        units = ""
    if whole:
        log.info("Data: %s, target %s: all %d crystals, scored as one set", source.description, target, len(store))
        return PreparedData(store, {WHOLE_SOURCE: np.arange(len(store))}, target, units, source.description)
    split_cfg = data_cfg.get("split") or {}
    splits = make_splits(
        store,
        kind=split_cfg.get("kind", "random"),
        fractions=tuple(split_cfg.get("fractions", (0.8, 0.1, 0.1))),
        seed=seed,
        file=split_cfg.get("file"),
        folds=split_cfg.get("folds"),
        fold=split_cfg.get("fold", 0),
    )
    log.info("Data: %s, target %s: %s", source.description, target, ", ".join(f"{name} {len(idx)}" for name, idx in splits.items()))
    return PreparedData(store, splits, target, units, source.description)


def target_units(target: str, units: str | None) -> str:
    """data.units if set, else the known units of the target's column ("" when unknown)."""
    return str(units) if units is not None else KNOWN_UNITS.get(target, "")


def class_labels(store: GraphStore, target: str, positive_at_most: float | None) -> tuple[np.ndarray, str]:
    """data.task=classification: the crystals' labels (1.0 or 0.0) and the name reports give them.

    With data.positive_at_most=X a crystal is of class 1 when its `target` is at most X (a band gap of 0 eV: a
    metal), and the labels are named after the rule; without it the column must hold 0 and 1.
    """
    values = store.targets  # NaN (unlabelled) stays NaN
    if positive_at_most is not None:
        labels = np.where(np.isnan(values), np.nan, values <= float(positive_at_most))
        return labels.astype(np.float64), f"{target} <= {float(positive_at_most):g}"
    others = np.flatnonzero((values != 0) & (values != 1) & ~np.isnan(values))
    if others.size:
        examples = first_few(f"{store.ids[i]} ({values[i]:g})" for i in others)
        raise ValueError(
            f"data.task=classification needs labels 0 and 1 in {target}, but {others.size} crystal(s) have other values: "
            f"{examples}. To make two classes of a number, set data.positive_at_most=X (class 1 where {target} <= X)"
        )
    return values.astype(np.float64), target


def check_target_floor(store: GraphStore, target: str, minimum: float | None) -> None:
    """Raise, naming the crystals, if any target lies below data.target_min (NaN targets pass)."""
    if minimum is None:
        return
    below = np.flatnonzero(store.targets < float(minimum))
    if below.size:
        examples = first_few(f"{store.ids[i]} ({store.targets[i]:g})" for i in below)
        raise ValueError(
            f"data.target_min={float(minimum):g}, but {below.size} crystal(s) have a {target} below it: {examples}. "
            f"Fix those targets, or set data.target_min=null if {target} has no lower bound"
        )


def report_skipped(store: GraphStore, listed_in: str = "skipped.csv") -> None:
    """One log line each summarising skipped items, isolated atoms and atoms implausibly close together."""
    if store.skipped:
        kinds = Counter(_reason_kind(reason) for _, reason in store.skipped).most_common()
        summary = "; ".join(f"{count} {kind}" for kind, count in kinds[:SHOWN_KINDS])
        if len(kinds) > SHOWN_KINDS:
            summary += f"; {sum(count for _, count in kinds[SHOWN_KINDS:])} for {len(kinds) - SHOWN_KINDS} other reason(s)"
        log.warning("Skipped %d item(s) (%s); listed with their reasons in %s", len(store.skipped), summary, listed_in)
    for crystals, _, warning in _suspect_structures(store):
        if crystals.size:
            log.warning("%s: %s", warning.format(crystals=crystals.size), first_few(store.ids[i] for i in crystals))


def structure_warnings(store: GraphStore) -> dict[str, str]:
    """{id: what looks wrong with the structure} for the crystals report_skipped warns about (the others are absent)."""
    notes: dict[str, list[str]] = {}
    for indices, note, _ in _suspect_structures(store):
        for i in indices:
            notes.setdefault(store.ids[i], []).append(note)
    return {item_id: "; ".join(found) for item_id, found in notes.items()}


def _suspect_structures(store: GraphStore) -> list[tuple[np.ndarray, str, str]]:
    """(crystal indices, short note, log warning with a {crystals} count) for each kept structure that looks wrong."""
    return [
        (
            store.crystals_with_isolated_atoms(),
            "an atom with no neighbour within the cutoff",
            f"{store.isolated_atoms} atoms in {{crystals}} crystal(s) have no neighbour within the cutoff, "
            "so the model sees each of them alone",
        ),
        (
            store.crystals_with_close_atoms(CLOSE_ATOMS),
            f"atoms under {CLOSE_ATOMS:g} Å apart",
            f"{{crystals}} crystal(s) have atoms under {CLOSE_ATOMS:g} Å apart, closer than any chemical bond (H2's is "
            "0.74 Å), so their structures are probably wrong (units, cell or coordinates) and their predictions meaningless",
        ),
    ]


def _reason_kind(reason: str) -> str:
    """A skip reason without its particulars: "invalid label 'Ac' (not a finite number)" -> "invalid label"."""
    return re.split(r":| \(| '| \S+\.(?:cif|vasp)\b", reason, maxsplit=1)[0][:80]


def _plan_source(data_cfg, cache_dir: Path) -> _SourcePlan:
    """Where the crystals come from: a cheap fingerprint now, the items only when read.

    A set data.snapshot wins over data.source, so `data=demo data.snapshot=PATH` reads PATH.
    """
    kind = data_cfg.get("source", "materials_project")
    target = str(data_cfg.target)
    snapshot = data_cfg.get("snapshot")
    if kind == "demo" and snapshot is None:
        from crystal_train.data.demo import DEMO_TARGET, build_demo_crystals, demo_fingerprint

        if target != DEMO_TARGET:
            raise ValueError(f"data.target={target}, but the built-in demo dataset has only {DEMO_TARGET}")
        num, seed = int(data_cfg.num_crystals), int(data_cfg.get("seed", 0))
        return _SourcePlan(
            fingerprint=demo_fingerprint(num, seed),
            target=target,
            description=f"built-in demo dataset ({num} EMT alloys, not Materials Project data)",
            read=lambda: (build_demo_crystals(num, seed), _identity, []),
        )
    from crystal_train.data.sources import CGCNN_LABELS, CGCNN_TARGET, content_fingerprint, is_cgcnn_folder, load_source, to_crystal

    if snapshot is None:
        if kind != "materials_project":
            raise ValueError(f"unknown data.source {kind!r}: use materials_project or demo, or set data.snapshot=PATH")
        from crystal_train.data.materials_project import resolve_mp_snapshot

        query = data_cfg.get("query") or {}
        snapshot = resolve_mp_snapshot(
            OmegaConf.to_container(query, resolve=True) if OmegaConf.is_config(query) else dict(query), [target], cache_dir
        )
    path = Path(snapshot).expanduser()
    id_column, cif_column = data_cfg.get("id_column"), data_cfg.get("cif_column")
    if is_cgcnn_folder(path) and target != CGCNN_TARGET:
        log.info(
            "%s is a CGCNN folder: its %s holds one unnamed label per crystal, reported as %r (not %s), in data.units (%s)",
            path, CGCNN_LABELS, CGCNN_TARGET, target, data_cfg.get("units") or "none given",
        )
        target = CGCNN_TARGET

    def read():
        data = load_source(path, target, id_column=id_column, cif_column=cif_column)
        version = data.metadata.get("database_version")
        log.info("Read %s (%s layout%s): %d items", path, data.layout, f", MP database {version}" if version else "", len(data.items))
        return data.items, to_crystal, data.skipped

    return _SourcePlan(content_fingerprint(path, target, id_column, cif_column), target, str(path), read)


def _identity(item):
    return item


def _limit(items: Sequence, limit: int | None, seed: int) -> Sequence:
    """A seeded subset of exactly `limit` items, drawn within each source split in proportion to its size
    (before the structures are read, so the ones that cannot be are skipped from it)."""
    if limit is None or limit >= len(items):
        return items
    rng = np.random.default_rng(seed)
    splits = np.array([str(item.split) for item in items])
    members_by_split = [np.flatnonzero(splits == name) for name in sorted(set(splits))]
    chosen = []
    for members, take in zip(members_by_split, _apportion(limit, [len(members) for members in members_by_split])):
        chosen.extend(rng.choice(members, size=take, replace=False).tolist())
    return [items[i] for i in sorted(chosen)]


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Shares of `total` proportional to `sizes` that add up to it exactly (largest remainders round up)."""
    quotas = np.array(sizes, dtype=float) * total / sum(sizes)
    shares = np.floor(quotas).astype(int)
    shares[np.argsort(shares - quotas, kind="stable")[: total - shares.sum()]] += 1
    return shares.tolist()
