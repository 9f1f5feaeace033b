"""Predictions for new structure files by a checkpoint, or the mean and spread of several (crystal-predict)."""

from __future__ import annotations

import glob
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig

from crystal_train.data.cif import STRUCTURE_FILE_PATTERNS, cif_data_blocks, is_structure_file_name, structure_file_id
from crystal_train.data.dataset import graph_settings, report_skipped, structure_warnings
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.sources import RawItem, is_table_file, load_structure_table, table_stem, to_crystal
from crystal_train.data.store import GraphStore, build_store
from crystal_train.listing import first_few
from crystal_train.training import artifacts
from crystal_train.training.applicability import warn_unseen_elements
from crystal_train.training.ensemble import Ensemble, checkpoint_paths
from crystal_train.training.inference import resolve_device

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_NAME = "predictions.csv"  # written into a folder given as output=
FEATURES_OUTPUT_NAME = "features.csv"  # written into a folder given as features=


def structure_files(inputs) -> list[Path]:
    """The structure files that `input=` names: a file, a folder (its structure files), a glob, or a list of these."""
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = [file for entry in entries for file in _entry_files(str(entry))]
    repeated = repeated_files(files)
    if repeated:
        raise ValueError(f"input= names {', '.join(repeated[:5])} more than once")
    return files


def repeated_files(files: list[Path]) -> list[str]:
    """The files named more than once, also when once by a relative and once by an absolute path (resolved, sorted)."""
    return sorted(str(path) for path, count in Counter(file.resolve() for file in files).items() if count > 1)


def _entry_files(entry: str) -> list[Path]:
    path = Path(entry).expanduser()
    if path.is_dir():
        return _folder_files(path)
    if path.exists():
        return [path]
    if glob.has_magic(str(path)):
        matches = sorted(Path(match) for match in glob.glob(str(path)))
        files = [match for match in matches if match.is_file()]
        if not files:
            raise FileNotFoundError(f"input pattern {entry} matches no file")
        return files
    raise FileNotFoundError(
        f"input not found: {entry} (give a structure file, a folder of them, a quoted glob such as 'cifs/*.cif', or a list [a.cif,b.cif])"
    )


def _folder_files(path: Path) -> list[Path]:
    entries = sorted(path.iterdir())
    files = [f for f in entries if f.is_file() and is_structure_file_name(f.name)]
    if not files:
        raise FileNotFoundError(f"no structure files ({', '.join(STRUCTURE_FILE_PATTERNS)}) in {path}")
    ignored = [f for f in entries if f not in files and not f.is_dir()]
    if ignored:
        tables = " (a table of structures, CSV, JSON, extended XYZ or ASE database, is read when input= names it)" if any(map(is_table_file, ignored)) else ""
        log.warning(
            "Ignored %d file(s) in %s that are not structure files (%s) or cannot be opened%s: %s",
            len(ignored), path, ", ".join(STRUCTURE_FILE_PATTERNS), tables, first_few(f.name for f in ignored),
        )
    folders = [f.name for f in entries if f.is_dir()]
    if folders:
        log.warning(
            "Not searched: %d subfolder(s) of %s (%s); add them to the input list, input=[%s,%s/...]",
            len(folders), path, first_few(folders), path, path / folders[0],
        )
    return files


def file_ids(files: list[Path], base_id: Callable[[Path], str] = structure_file_id) -> list[str]:
    """Each file's id (`base_id`), unique: files that would share one (a.cif and a.vasp) keep their whole names, and
    files whose whole names are the same (Cu/CONTCAR and NiAl/CONTCAR) their paths below the folder they share.

    Repeated until no two clash, since a whole name can equal another file's id (a.cif beside a.cif.vasp).
    """
    ids = [base_id(f) for f in files]
    while True:
        counts = Counter(ids)
        clashing = [i for i, item_id in enumerate(ids) if counts[item_id] > 1 and item_id != files[i].name]
        if not clashing:
            break
        for i in clashing:
            ids[i] = files[i].name
    counts = Counter(ids)
    same_name = [i for i, item_id in enumerate(ids) if counts[item_id] > 1]
    if same_name:  # distinct files (structure_files refuses repeats), so their paths below a shared folder differ
        absolute = {i: Path(os.path.abspath(files[i])) for i in same_name}  # as given: links are not followed
        shared = os.path.commonpath([path.parent for path in absolute.values()])
        for i, path in absolute.items():
            ids[i] = path.relative_to(shared).as_posix()
    return ids


@dataclass
class PredictedCrystals:
    """An ensemble's predictions for the crystals of a store, in its order."""

    ids: list[str]
    formulas: list[str]  # reduced formulas
    predictions: np.ndarray  # in the target's units
    spread: np.ndarray | None  # the members' sample standard deviation; None for one checkpoint
    unseen: dict[str, list[str]] | None  # {id: elements its training split lacked}; None when the checkpoints do not record them
    warnings: dict[str, str]  # {id: what looks wrong with its structure}
    features: np.ndarray | None = None  # (crystals, width): what the output head reads, when asked for


def read_structures(
    ensemble: Ensemble, items: list[RawItem], listed_in: str, progress: bool = True, skipped: list[tuple[str, str]] = ()
) -> GraphStore:
    """Graphs of the items at the checkpoints' graph settings; items that cannot be used are skipped and reported,
    after those `skipped` before (rows of a table without a structure)."""
    settings = graph_settings(ensemble.checkpoint["config"]["graph"])
    store = build_store(items, to_crystal, settings, ensemble.elements(), progress=progress, skipped_before=skipped)
    report_skipped(store, listed_in=listed_in)
    return store


def predict_crystals(ensemble: Ensemble, store: GraphStore, device, batch_size: int, features: bool = False) -> PredictedCrystals:
    """Every crystal's prediction (and with `features`, its feature vector), with the warnings about unseen elements
    and suspect structures logged."""
    every_crystal = np.arange(len(store))
    training_elements = ensemble.training_elements()
    unseen = warn_unseen_elements(store, every_crystal, training_elements)
    graphs = DeviceGraphs(store, device, distinct_distances=ensemble.uses_distinct_distances)
    predictions, spread = ensemble.combine(ensemble.member_predictions(graphs, every_crystal, batch_size))
    return PredictedCrystals(
        list(store.ids), store.formulas(every_crystal), predictions, spread, unseen if training_elements is not None else None,
        structure_warnings(store), ensemble.crystal_features(graphs, every_crystal, batch_size) if features else None,
    )


def run_predict(cfg: DictConfig) -> Path:
    """Predict every readable structure; unreadable ones are logged and listed beside the output."""
    output = output_file(str(cfg.output))
    skipped_path = output.with_name(output.name.removesuffix(".csv") + ".skipped.csv")
    files = structure_files(cfg.input)
    ckpts = checkpoint_paths(cfg.ckpt)
    features_path = output_file(str(cfg.features), FEATURES_OUTPUT_NAME) if cfg.get("features") else None
    if features_path is not None and features_path.resolve() in (output.resolve(), skipped_path.resolve()):
        raise ValueError(f"features={cfg.features} would be written over {features_path.name}, which crystal-predict writes too: give another file")
    outputs = (output, skipped_path, *([features_path] if features_path else []))
    _refuse_overwriting([*ckpts, *files, *([Path(cfg.atom_init)] if cfg.get("atom_init") else [])], outputs)
    items, table_skipped = input_items(files, cfg.data.get("id_column"), cfg.data.get("cif_column"))
    device = resolve_device(str(cfg.device), "device")
    ensemble = Ensemble.load(ckpts, device, atom_init=cfg.get("atom_init"))
    if features_path:
        ensemble.check_one_model("crystal features (features=)")
    checkpoint = ensemble.checkpoint
    store = read_structures(ensemble, items, listed_in=str(skipped_path), skipped=table_skipped)
    output.parent.mkdir(parents=True, exist_ok=True)
    for earlier in outputs:  # an earlier run's files would now describe other structures
        earlier.unlink(missing_ok=True)
    if store.skipped:
        artifacts.write_skipped(skipped_path, store.skipped)
        for item_id, reason in store.skipped:
            log.warning("Not predicted: %s (%s)", item_id, reason)
    if len(store) == 0:
        given = cfg.input if isinstance(cfg.input, str) else ", ".join(map(str, cfg.input))
        raise ValueError(f"none of the {len(items) + len(table_skipped)} structure(s) in {given} could be used; see {skipped_path}")
    predicted = predict_crystals(ensemble, store, device, int(cfg.batch_size), features=features_path is not None)
    # Checkpoints that record their training elements get an unseen_elements column; others cannot tell.
    artifacts.write_predictions(
        output, predicted.ids, predicted.predictions, unseen=predicted.unseen, spread=predicted.spread, warnings=predicted.warnings,
        formulas=predicted.formulas,
    )
    units = f" in {checkpoint['units']}" if checkpoint.get("units") else ""
    what = "probabilities of class 1" if ensemble.task == "classification" else "predictions of"
    log.info("Wrote %d %s %s%s by %s to %s", len(store), what, checkpoint.get("target"), units, ensemble.name, output)
    if features_path:
        features_path.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_crystal_features(features_path, predicted.ids, predicted.features)
        log.info("Wrote the %d-number feature vectors of %d crystals to %s", predicted.features.shape[1], len(store), features_path)
    return output


def structure_file_items(file: Path, file_id: str) -> list[RawItem]:
    """The item of a structure file, or of each structure of a CIF that holds several (one data block each), with the
    id `<file id>#<block name>` (`#1`, `#2`, ... when block names repeat)."""
    whole_file = [RawItem(id=file_id, target=math.nan, split=None, path=str(file))]
    if file.suffix.lower() != ".cif":
        return whole_file
    try:
        blocks = cif_data_blocks(file.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return whole_file  # reading it as a structure reports why
    if len(blocks) < 2:
        return whole_file
    names = [name for name, _ in blocks]
    if "" in names or len(set(names)) < len(names):
        names = [str(number) for number in range(1, len(blocks) + 1)]
    log.info("Read %d structures from the data blocks of %s, as %s#%s ...", len(blocks), file, file_id, names[0])
    return [RawItem(id=f"{file_id}#{name}", target=math.nan, split=None, cif_text=text) for name, (_, text) in zip(names, blocks)]


def input_items(files: list[Path], id_column: str | None = None, cif_column: str | None = None) -> tuple[list[RawItem], list[tuple[str, str]]]:
    """(an item per structure file, per structure of a CIF that holds several, and per row of each table (CSV, JSON,
    extended XYZ, ASE database), in input order; what was skipped, with the reason: table rows without an id or
    structure, and tables that cannot be read as one, such as a CGCNN folder's id_prop.csv matched by a glob).
    ValueError naming an id that two inputs share, whose predictions could not be told apart."""
    tables = [file for file in files if is_table_file(file)]
    read_as_structures = [file for file in files if file not in tables]
    ids = dict(zip(read_as_structures, file_ids(read_as_structures)))
    prefixes = dict(zip(tables, file_ids(tables, table_stem)))  # of frames and rows without an id, as traj#0
    items, skipped, origin = [], [], {}
    for file in files:
        if file in ids:
            rows = structure_file_items(file, ids[file])
            where = str(file) if len(rows) == 1 else f"a data block of {file}"
        else:
            try:
                table = load_structure_table(file, id_column, cif_column, default_prefix=prefixes[file])
            except ValueError as error:
                skipped.append((str(file), f"not a table of structures: {error}"))
                continue
            rows, where = table.items, f"a row of {file}"
            skipped += table.skipped
        clash = next((item.id for item in rows if item.id in origin), None)
        if clash is not None:
            raise ValueError(f"input= gives the id {clash} to {where} and to {origin[clash]}: predictions could not be told apart; rename one")
        origin.update((item.id, where) for item in rows)
        items += rows
    return items, skipped


def output_file(output: str, default_name: str = DEFAULT_OUTPUT_NAME) -> Path:
    """The CSV that `output=` (or `features=`) names: the file itself, or `default_name` in a folder (one that exists,
    or ends in /)."""
    path = Path(output).expanduser()
    return path / default_name if path.is_dir() or output.endswith(("/", os.sep)) else path


def _refuse_overwriting(inputs: list[Path], outputs: tuple[Path, ...]) -> None:
    """Raise before any work if an output file (or the skip list beside it) is one of the inputs."""
    read = {path.expanduser().resolve(): path for path in inputs}
    for path in outputs:
        if path.resolve() in read:
            raise ValueError(f"crystal-predict would write {path} over its input {read[path.resolve()]}: give another output= file")
