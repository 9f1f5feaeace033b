"""Reading every supported dataset layout into raw, unparsed items.

Structures are not parsed here: `load_source` only collects ids, labels, splits and the
structure payload (CIF text, a file path or a structure dict). `to_crystal` turns one
item into a `Crystal` and is meant to run in parallel worker processes.

Layouts, detected from the path:

* ``csv``: one CSV file (plain, ``.gz`` or ``.xz``) with an id column, a CIF column,
  the target column and an optional ``split`` column (train/val/test).
* ``split_folder``: a folder holding ``train.csv``, ``val.csv`` and ``test.csv`` in the CSV
  form above; the split comes from the file name.
* ``cgcnn_folder``: a folder with ``id_prop.csv`` (id, label; no header) and ``<id>.cif``
  files. Its single label column is used whatever the target is called; the target name
  given is kept in ``SourceData.target``.
* ``json``: ``.json``/``.json.gz`` holding a list of records or a pandas ``split``-oriented
  table (``{"columns", "index", "data"}``, the matbench form, ids taken from the index).
* ``snapshot``: a Materials Project snapshot written by `materials_project.download_snapshot`.
* ``extxyz``: an extended XYZ file (``.extxyz`` or ``.xyz``, plain or ``.gz``/``.xz``/``.bz2``), as ASE writes it:
  a frame per structure, its id, label and split in the frame's key=value pairs (scalars a calculator stored, such as
  ``energy``, too); frames without an id key are ``<file stem>#<frame index>``.
* ``ase_db``: an ASE database (``.db``), read the same way: a row per structure, its key-value pairs as the frame's;
  rows without an id key are ``<file stem>#<row id>``.
"""

from __future__ import annotations

import dataclasses
import bz2
import csv
import gzip
import hashlib
import json
import lzma
import math
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crystal_train.data.cif import crystal_via_pymatgen, parse_cif, read_structure_file
from crystal_train.data.crystal import Crystal, SkippedItem, check_geometry
from crystal_train.data.materials_project import SNAPSHOT_FORMAT, SNAPSHOT_VERSION
from crystal_train.listing import first_few

ID_COLUMNS = ("material_id", "id", "mbid", "name")
STRUCTURE_COLUMNS = ("cif", "structure", "cif_text")
SPLITS = ("train", "val", "test")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.xz")
JSON_SUFFIXES = (".json", ".json.gz")
EXTXYZ_SUFFIXES = tuple(f"{name}{packed}" for name in (".extxyz", ".xyz") for packed in ("", ".gz", ".xz", ".bz2"))
ASE_DB_SUFFIXES = (".db",)  # an ASE database (SQLite)
TABLE_SUFFIXES = CSV_SUFFIXES + JSON_SUFFIXES + EXTXYZ_SUFFIXES + ASE_DB_SUFFIXES
EXTENSIVE_RESULTS = ("energy", "free_energy")  # a calculator's totals for the cell; their *_per_atom are intensive
# the columns the ids and structures of extended XYZ frames and ASE database rows are read into
_ENTRY_ID, _ENTRY_STRUCTURE = "ase_entry_id", "ase_entry_structure"
CGCNN_LABELS = "id_prop.csv"
CGCNN_TARGET = "target"  # what a CGCNN folder's unnamed labels are called


@dataclass
class RawItem:
    """One labelled item whose structure has not been parsed yet."""

    id: str
    target: float
    split: str | None  # "train" | "val" | "test" | None
    cif_text: str | None = None  # CIF text to parse
    path: str | None = None  # a structure file to read
    structure: dict | None = None  # pymatgen Structure.as_dict() or {"lattice", "numbers", "frac_coords" or "cart_coords"[, "pbc"]}


@dataclass
class SourceData:
    """Everything read from one data source, before structure parsing."""

    items: list[RawItem]
    skipped: list[tuple[str, str]]  # (id, reason)
    layout: str  # "csv" | "split_folder" | "cgcnn_folder" | "json" | "snapshot"
    target: str
    metadata: dict = field(default_factory=dict)


def is_cgcnn_folder(path: Path) -> bool:
    """Whether `path` is a CGCNN data folder (id_prop.csv beside <id>.cif files)."""
    return path.is_dir() and (path / CGCNN_LABELS).is_file()


def load_source(
    path: str | Path, target: str, id_column: str | None = None, cif_column: str | None = None
) -> SourceData:
    """Detect the layout of `path` and read its items (no structure parsing)."""
    path = Path(path)
    _require_existing(path)
    if path.is_dir():
        if is_cgcnn_folder(path):
            return _load_cgcnn_folder(path, target)
        if any((path / f"{split}.csv").is_file() for split in SPLITS):
            return _load_split_folder(path, target, id_column, cif_column)
        raise FileNotFoundError(
            f"data folder {path} has neither {CGCNN_LABELS} (CGCNN layout) "
            f"nor train.csv/val.csv/test.csv (split-folder layout)"
        )
    return _load_file(path, target, id_column, cif_column)


def is_table_file(path: Path) -> bool:
    """Whether `path` is named as a table of structures: CSV, JSON, extended XYZ or an ASE database."""
    return path.name.lower().endswith(TABLE_SUFFIXES)


def load_structure_table(
    path: str | Path, id_column: str | None = None, cif_column: str | None = None, default_prefix: str | None = None
) -> SourceData:
    """Every row of a CSV or JSON table (or a crystal-train snapshot) or ASE database, or frame of an extended XYZ file,
    with an id and a structure, labelled or not: the structures crystal-predict reads from a table. Rows without an id
    or a structure, and repeated ids, are skipped. Frames and database rows without an id key are named
    `<default_prefix>#<frame index or row id>` (default: `table_stem`)."""
    path = Path(path)
    _require_existing(path)
    return _load_file(path, None, id_column, cif_column, default_prefix)


def table_stem(path: Path) -> str:
    """A table file's name without its suffixes (data for data.extxyz.gz)."""
    return path.name[: -max(len(suffix) for suffix in TABLE_SUFFIXES if path.name.lower().endswith(suffix))]


def _load_file(
    path: Path, target: str | None, id_column: str | None, cif_column: str | None, default_prefix: str | None = None
) -> SourceData:
    """A table of structures, by its name's suffix: every row with an id and a structure, labelled with `target`
    (None: unlabelled rows too)."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return _load_csv(path, target, id_column, cif_column)
    if name.endswith(JSON_SUFFIXES):
        return _load_json(path, target, id_column, cif_column)
    if name.endswith(EXTXYZ_SUFFIXES):
        return _atoms_table(path, _extxyz_entries(path, default_prefix or table_stem(path)), target, id_column, "extxyz")
    if name.endswith(ASE_DB_SUFFIXES):
        return _atoms_table(path, _ase_db_entries(path, default_prefix or table_stem(path)), target, id_column, "ase_db")
    raise ValueError(
        f"unsupported data file {path}: expected {', '.join(TABLE_SUFFIXES)}, "
        f"a folder with train.csv/val.csv/test.csv, or a CGCNN folder with {CGCNN_LABELS}"
    )


def content_fingerprint(path: str | Path, target: str, id_column: str | None = None, cif_column: str | None = None) -> str:
    """sha256 of every file's bytes at `path` (a file, or a folder's files: those directly in it, and the CIFs in its
    subfolders that a CGCNN folder's id_prop.csv names) and the read settings.

    Cheap to compute without parsing anything, so a graph cache can be found before the source is
    read; layout detection is a function of the same bytes and settings. A folder's other subfolders are left out:
    runs started from inside it write theirs there (outputs/), which would change the key every run.
    """
    path = Path(path)
    _require_existing(path)
    files = [(path, path.name)] if path.is_file() else [(f, f.name) for f in path.iterdir() if f.is_file()] + _cifs_in_subfolders(path)
    return _fingerprint(files, target, {"id_column": id_column, "cif_column": cif_column})


def _cifs_in_subfolders(folder: Path) -> list[tuple[Path, str]]:
    """(file, name) of each `<id>.cif` below `folder` that its id_prop.csv names by a path (cifs/mp-1), if it has one."""
    labels = folder / CGCNN_LABELS
    if not labels.is_file():
        return []
    with open(labels, newline="", encoding="utf-8", errors="replace") as handle:
        ids = {row[0].strip().lstrip("\ufeff") for row in csv.reader(handle) if row}
    named = (folder / f"{item_id}.cif" for item_id in sorted(ids) if "/" in item_id or os.sep in item_id)
    return [(cif, Path(os.path.relpath(cif, folder)).as_posix()) for cif in named if cif.is_file()]


def _require_existing(path: Path) -> None:
    if not path.exists():
        where = "" if path.is_absolute() else f", looked for from {Path.cwd()}"
        overlays = " (or, for the mp2018_* experiment overlays, with $CRYSTAL_TRAIN_MP2018)" if "mp2018" in path.name else ""
        raise FileNotFoundError(f"data source {path} does not exist{where}; give the file or folder with data.snapshot=PATH{overlays}")


def to_crystal(item: RawItem) -> Crystal:
    """Parse one item's structure; raises SkippedItem(id, reason) when it cannot be used."""
    if item.cif_text is not None:
        crystal = parse_cif(item.cif_text, item.id)
    elif item.path is not None:
        crystal = _read_path(item)
    elif item.structure is not None:
        crystal = _from_structure_dict(item.structure, item.id)
    else:
        raise SkippedItem(item.id, "no structure")
    return dataclasses.replace(crystal, id=item.id, target=item.target, split=item.split)


def _read_path(item: RawItem) -> Crystal:
    path = Path(item.path)
    if path.is_dir():
        raise SkippedItem(item.id, f"{path.name} is a folder, not a structure file")
    if not path.is_file():
        raise SkippedItem(item.id, f"missing file {path.name}")
    try:
        return read_structure_file(path)
    except SkippedItem as error:
        raise SkippedItem(item.id, error.reason) from None


def _from_structure_dict(structure: dict, item_id: str) -> Crystal:
    if "numbers" in structure:
        return _from_arrays(structure, item_id)
    from pymatgen.core import Structure

    return crystal_via_pymatgen(lambda: Structure.from_dict(structure), item_id, "malformed structure")


def _from_arrays(structure: dict, item_id: str) -> Crystal:
    """{"lattice", "numbers", "frac_coords"}, or "cart_coords" (Å) with "pbc" as ASE's Atoms give them."""
    pbc = np.asarray(structure.get("pbc", True))
    if not pbc.all():
        raise SkippedItem(item_id, f"not periodic along every axis (pbc={pbc.tolist()}): give it a cell and pbc=True")
    coordinates = "cart_coords" if "cart_coords" in structure else "frac_coords"
    try:
        lattice = np.asarray(structure["lattice"], dtype=np.float64)
        numbers = np.asarray(structure["numbers"], dtype=np.int64)
        coords = np.asarray(structure[coordinates], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise SkippedItem(item_id, f"malformed structure arrays: {error}") from None
    n = len(numbers)
    if lattice.shape != (3, 3) or numbers.shape != (n,) or coords.shape != (n, 3) or n == 0:
        raise SkippedItem(
            item_id,
            f"malformed structure arrays: lattice {lattice.shape}, numbers {numbers.shape}, {coordinates} {coords.shape}",
        )
    if coordinates == "cart_coords":
        check_geometry(lattice, np.zeros((0, 3)), item_id)  # the cell first: a flat one has no fractional coordinates
        coords = np.linalg.solve(lattice.T, coords.T).T
    frac_coords = coords
    check_geometry(lattice, frac_coords, item_id)
    return Crystal(id=item_id, lattice=lattice, numbers=numbers, frac_coords=frac_coords)


# --- layouts ---------------------------------------------------------------------------------


def _load_csv(path: Path, target: str | None, id_column: str | None, cif_column: str | None) -> SourceData:
    frame = _read_csv(path)
    builder = _ItemBuilder()
    builder.add_frame(frame, path, target, id_column, cif_column, split=None)
    return builder.result("csv", target)


def _load_split_folder(folder: Path, target: str, id_column: str | None, cif_column: str | None) -> SourceData:
    files = [folder / f"{split}.csv" for split in SPLITS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"split folder {folder} is missing {', '.join(missing)}")
    builder = _ItemBuilder()
    for file, split in zip(files, SPLITS):
        builder.add_frame(_read_csv(file), file, target, id_column, cif_column, split=split)
    return builder.result("split_folder", target)


def _load_cgcnn_folder(folder: Path, target: str) -> SourceData:
    labels_file = folder / CGCNN_LABELS
    frame = _read_csv(labels_file, header=None)
    if frame.shape[1] != 2:
        raise ValueError(f"{labels_file} must have 2 columns (id, label) and no header; found {frame.shape[1]}")
    builder = _ItemBuilder()
    labels = _parse_labels(frame[1], f"{labels_file}: its label column")
    for row, (item_id, raw, label) in enumerate(zip(frame[0].str.strip(), frame[1], labels), start=1):
        cif = folder / f"{item_id}.cif"
        if not builder.accept(item_id, raw, label, f"{CGCNN_LABELS} line {row}"):
            continue
        if not cif.is_file():
            builder.skip(item_id, f"missing file {cif.name}")
        elif cif.stat().st_size == 0:
            builder.skip(item_id, f"empty file {cif.name}")
        else:
            builder.items.append(RawItem(id=item_id, target=label, split=None, path=str(cif)))
    return builder.result("cgcnn_folder", target)


def _load_json(path: Path, target: str | None, id_column: str | None, cif_column: str | None) -> SourceData:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read JSON from {path}: {error}") from None
    if isinstance(data, dict) and data.get("format") == SNAPSHOT_FORMAT:
        return _load_snapshot(path, data, target)
    if isinstance(data, dict) and {"columns", "data"} <= data.keys():
        frame = pd.DataFrame(data["data"], columns=data["columns"], index=data.get("index"), dtype=object)
        if id_column is None and not any(c in frame.columns for c in ID_COLUMNS):
            frame = frame.rename_axis("id").reset_index()
    elif isinstance(data, list) and all(isinstance(record, dict) for record in data):
        frame = pd.DataFrame(data, dtype=object)  # object: one missing id must not turn integer ids into floats
    else:
        raise ValueError(
            f"{path}: expected a list of records, a pandas table with 'columns'/'index'/'data', "
            f"or a {SNAPSHOT_FORMAT} file"
        )
    builder = _ItemBuilder()
    builder.add_frame(frame, path, target, id_column, cif_column, split=None)
    return builder.result("json", target)


def _extxyz_entries(path: Path, prefix: str) -> list[tuple[str, object, dict]]:
    """(`<prefix>#<frame index>`, Atoms, key=value pairs) of each frame of an extended XYZ file."""
    from ase.io import read

    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(Path(path.name.lower()).suffix, open)
    try:  # decompressed here: ASE knows compressed files by lower-case suffixes only
        with opener(path, "rt", encoding="utf-8") as handle:
            frames = read(handle, index=":", format="extxyz")
    except Exception as error:  # ASE raises many types for a malformed file
        raise ValueError(f"cannot read extended XYZ from {path}: {type(error).__name__}: {error}") from None
    return [(f"{prefix}#{index}", atoms, atoms.info) for index, atoms in enumerate(frames)]


def _ase_db_entries(path: Path, prefix: str) -> list[tuple[str, object, dict]]:
    """(`<prefix>#<row id>`, Atoms, key-value pairs) of each row of an ASE database, which is only read."""
    import sqlite3

    from ase.db import connect

    try:  # read-only first: ASE would add its tables to an SQLite file of anything else
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            if not connection.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='systems'").fetchone()[0]:
                raise ValueError("an SQLite file without ASE's 'systems' table")
        with connect(path, type="db", create_indices=False) as database:
            return [(f"{prefix}#{row.id}", row.toatoms(), row.key_value_pairs) for row in database.select()]
    except Exception as error:  # sqlite3 and ASE raise many types for a file that is no ASE database
        raise ValueError(f"cannot read an ASE database from {path}: {type(error).__name__}: {error}") from None


def _atoms_table(
    path: Path, entries: list[tuple[str, object, dict]], target: str | None, id_column: str | None, layout: str
) -> SourceData:
    """(default id, ASE Atoms, key=value pairs) entries as the rows of a table: the pairs and the calculator's scalar
    results (with energy_per_atom and free_energy_per_atom), the structure, and the id: the entry's `id_column` key
    (else the first of ID_COLUMNS it has), or its default id. Training on a calculator's total energy is refused: it
    grows with the cell."""
    if not entries:
        raise ValueError(f"{path} holds no structures")
    id_keys = (id_column,) if id_column is not None else ID_COLUMNS
    rows = []
    for default_id, atoms, info in entries:
        results = {key: value for key, value in (atoms.calc.results if atoms.calc is not None else {}).items() if np.ndim(value) == 0}
        per_atom = {f"{key}_per_atom": results[key] / len(atoms) for key in EXTENSIVE_RESULTS if key in results and len(atoms)}
        structure = {"lattice": atoms.cell.array, "numbers": atoms.numbers, "cart_coords": atoms.positions, "pbc": atoms.pbc}
        item_id = next((info[key] for key in id_keys if key in info), default_id)
        rows.append({**per_atom, **results, **info, _ENTRY_ID: item_id, _ENTRY_STRUCTURE: structure})
    frame = pd.DataFrame(rows, dtype=object)
    keys = [column for column in frame.columns if column not in (_ENTRY_ID, _ENTRY_STRUCTURE)]
    if id_column is not None and id_column not in keys:  # else every entry would quietly get its default id
        raise ValueError(f"{path}: data.id_column {id_column!r} is no key of its structures; keys: {', '.join(keys) or 'none'}")
    if target is not None and target not in keys:
        raise ValueError(
            f"{path}: target {target!r} is no key of its structures (data.target=KEY names the one to use); keys: {', '.join(keys) or 'none'}"
        )
    if target in EXTENSIVE_RESULTS and not any(target in info for _, _, info in entries):
        raise ValueError(
            f"{path}: {target} is each cell's total (a calculator's result), which grows with the cell: the models here "
            f"predict per-atom or intensive quantities (a supercell gets its cell's prediction). Train on data.target={target}_per_atom"
        )
    builder = _ItemBuilder()
    builder.add_frame(frame, path, target, _ENTRY_ID, _ENTRY_STRUCTURE, split=None)
    return builder.result(layout, target)


def _load_snapshot(path: Path, data: dict, target: str | None) -> SourceData:
    """A snapshot's records with their `target` (every record, unlabelled, for None)."""
    if data.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: snapshot version {data.get('version')!r} is not supported (expected {SNAPSHOT_VERSION})")
    targets = data.get("targets", [])
    if target is not None and target not in targets:
        raise ValueError(f"{path}: target {target!r} is not in this snapshot; available targets: {', '.join(targets)}")
    builder = _ItemBuilder()
    records = data["records"]
    raws = [record.get("targets", {}).get(target) for record in records]
    labels = _parse_labels(pd.Series(raws, dtype=object), f"{path}: target {target!r}") if target is not None else [math.nan] * len(records)
    for index, (record, raw, label) in enumerate(zip(records, raws, labels)):
        item_id = "" if record.get("id") is None else str(record["id"])
        if not builder.accept(item_id, raw, label, f"{path.name} record {index}", labelled=target is not None):
            continue
        if not record.get("structure"):
            builder.skip(item_id, "missing structure")
        else:
            builder.items.append(RawItem(id=item_id, target=label, split=None, structure=record["structure"]))
    metadata = {key: value for key, value in data.items() if key not in ("records", "format", "version")}
    return builder.result("snapshot", target, metadata)


# --- shared helpers ----------------------------------------------------------------------------


class _ItemBuilder:
    """Collects items and skip reasons; of rows sharing an id only the first is read."""

    def __init__(self):
        self.items: list[RawItem] = []
        self.skipped: list[tuple[str, str]] = []
        self._seen: set[str] = set()

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append((item_id, reason))

    def accept(self, item_id: str, raw_label, label: float, where: str, labelled: bool = True) -> bool:
        """Record the id; False (with a skip reason) for a missing id, a duplicate or (when `labelled`) a bad label."""
        if not item_id:
            self.skip(where, "missing id")
            return False
        if item_id in self._seen:
            self.skip(item_id, "duplicate id (only its first row is read, even if that row was skipped)")
            return False
        self._seen.add(item_id)
        if labelled and not math.isfinite(label):
            self.skip(item_id, _label_reason(raw_label))
            return False
        return True

    def add_frame(
        self, frame: pd.DataFrame, path: Path, target: str | None, id_column: str | None, cif_column: str | None, split: str | None
    ) -> None:
        """Add the rows of one table: with their `target` and split, or (target None) every structure, unlabelled."""
        id_col = _pick_column(frame, path, id_column, ID_COLUMNS, "id", "data.id_column")
        struct_col = _pick_column(frame, path, cif_column, STRUCTURE_COLUMNS, "structure/CIF", "data.cif_column")
        if target is None:
            self._add_rows(frame[id_col], [None] * len(frame), [math.nan] * len(frame), frame[struct_col], [None] * len(frame), path, False)
            return
        if target not in frame.columns:
            raise ValueError(f"{path}: target column {target!r} not found (data.target=COLUMN names the column to use); available columns: {_columns(frame)}")
        splits = _row_splits(frame, path)
        if split is not None:  # the file's name says the split; a split column may only agree with it
            disagree = sorted({str(value) for value in splits if value is not None and value != split})
            if disagree:
                raise ValueError(f"{path}: its name makes every row {split!r}, but its split column says {', '.join(disagree)}")
            splits = [split] * len(frame)
        labels = _parse_labels(frame[target], f"{path}: target column {target!r}")
        self._add_rows(frame[id_col], frame[target], labels, frame[struct_col], splits, path, True)

    def _add_rows(self, ids, raw_labels, labels, payloads, splits, path: Path, labelled: bool) -> None:
        """An item per row with an id (the first of its id), a structure and, when `labelled`, a finite label."""
        rows = zip(ids, raw_labels, labels, payloads, splits)
        for index, (item_id, raw, label, payload, row_split) in enumerate(rows):
            item_id = "" if _is_missing(item_id) else str(item_id).strip()
            if not self.accept(item_id, raw, label, f"{path.name} row {index + 1}", labelled):
                continue
            if isinstance(payload, str):
                if not payload.strip():
                    self.skip(item_id, "empty CIF")
                    continue
                self.items.append(RawItem(id=item_id, target=label, split=row_split, cif_text=payload))
            elif isinstance(payload, dict) and payload:
                self.items.append(RawItem(id=item_id, target=label, split=row_split, structure=payload))
            else:
                self.skip(item_id, "missing structure")

    def result(self, layout: str, target: str, metadata: dict | None = None) -> SourceData:
        return SourceData(self.items, self.skipped, layout, target, metadata or {})


def _read_csv(path: Path, header: int | None = 0) -> pd.DataFrame:
    try:
        return pd.read_csv(path, header=header, dtype=str, keep_default_na=False)
    except (OSError, ValueError, EOFError) as error:  # includes pandas ParserError and empty files
        raise ValueError(f"cannot read CSV {path}: {error}") from None


def _pick_column(frame, path, explicit, candidates, what, option) -> str:
    if explicit is not None:
        if explicit not in frame.columns:
            raise ValueError(f"{path}: {option} {explicit!r} not found; available columns: {_columns(frame)}")
        return explicit
    for name in candidates:
        if name in frame.columns:
            return name
    raise ValueError(
        f"{path}: no {what} column (looked for {', '.join(candidates)}; set {option} to choose one); "
        f"available columns: {_columns(frame)}"
    )


def _row_splits(frame: pd.DataFrame, path: Path) -> list[str | None]:
    """Each row's split from the column named split in any case ("split", "Split"), or None without one."""
    columns = ["split"] if "split" in frame.columns else [c for c in frame.columns if str(c).strip().lower() == "split"]
    if not columns:
        return [None] * len(frame)
    if len(columns) > 1:
        raise ValueError(f"{path}: several split columns ({', '.join(map(repr, columns))}); keep one")
    column = columns[0]
    values = [value.strip() if isinstance(value, str) else value for value in frame[column]]
    bad_rows = [row for row, value in enumerate(values, start=1) if value not in SPLITS]
    if bad_rows:
        bad = sorted({repr(values[row - 1]) for row in bad_rows})
        rows = ("rows " if len(bad_rows) > 1 else "row ") + first_few(bad_rows, shown=10)
        raise ValueError(f"{path}: column {column!r} has values {', '.join(bad[:10])} ({rows}); expected only {', '.join(SPLITS)}")
    return values


BOOLEAN_TEXT = {"true": 1.0, "false": 0.0}


def _parse_labels(raw: pd.Series, what: str) -> np.ndarray:
    """Floats for every raw label; NaN where the value is missing or not a number. ValueError naming `what` when
    values are given but none is a number: a text column (data.target=formula), not a few bad labels."""
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):  # text: stripped, and true / false (a class label) as 1 / 0
        raw = raw.astype(object).map(lambda v: BOOLEAN_TEXT.get(v.strip().lower(), v.strip()) if isinstance(v, str) else v)
    labels = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    given = [value for value in raw if not _is_missing(value) and not (isinstance(value, str) and not value)]
    if given and not np.isfinite(labels).any():
        raise ValueError(f"{what} holds no numbers (e.g. {given[0]!r}): the target must be a numeric column")
    return labels


def _label_reason(raw) -> str:
    if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
        return "missing label"
    return f"invalid label {raw!r} (not a finite number)"


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _columns(frame: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in frame.columns)


def _fingerprint(files: list[tuple[Path, str]], target: str, columns) -> str:
    """sha256 over (name, bytes) of each file, the target name and the columns used."""
    digest = hashlib.sha256(json.dumps({"target": target, "columns": columns}).encode())
    for file, name in sorted(files, key=lambda entry: entry[1]):
        digest.update(f"\0{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
