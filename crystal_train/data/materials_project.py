"""Downloading Materials Project data with mp-api into a reusable offline snapshot file.

The snapshot is a gzip JSON file ``{"format": "crystal-train-snapshot", "version": 1, "query",
"targets", "database_version", "mp_api_version", "created_utc", "num_records", "records"}``;
each record is ``{"id", "structure", "targets": {name: value}}`` with the structure stored as
``{"lattice", "numbers", "frac_coords"}`` (or a pymatgen dict for a disordered structure).
The API key is only handed to the client: it is never written, logged or stored.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import json
import logging
import os
import typing
from datetime import datetime, timezone
from enum import Enum
from importlib.metadata import version as package_version
from pathlib import Path

from crystal_train.atomic_file import atomic_write, exclusive_lock, remove_unfinished_writes

SNAPSHOT_FORMAT = "crystal-train-snapshot"
SNAPSHOT_VERSION = 1
API_KEY_VARIABLE = "MP_API_KEY"
# search() arguments that crystal-train sets itself and a query may not override
_RESERVED = ("self", "kwargs", "fields", "all_fields", "chunk_size", "num_chunks", "_page", "_sort_fields")

log = logging.getLogger(__name__)


class MissingApiKeyError(RuntimeError):
    """No cached snapshot and no Materials Project API key to download one."""


def default_cache_dir() -> Path:
    """`$CRYSTAL_TRAIN_CACHE`, else ``~/.cache/crystal-train``."""
    configured = os.environ.get("CRYSTAL_TRAIN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "crystal-train"


def snapshot_path(query: dict, targets: list[str], cache_dir: Path) -> Path:
    """Cache file for (query, targets): the same query always maps to the same file."""
    try:
        key = json.dumps({"version": SNAPSHOT_VERSION, "query": query, "targets": sorted(targets)}, sort_keys=True)
    except TypeError as error:
        raise TypeError(
            f"Materials Project query must be a plain JSON-serialisable dict "
            f"(convert OmegaConf configs with OmegaConf.to_container): {error}"
        ) from None
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"mp-snapshot-{digest}.json.gz"


def resolve_mp_snapshot(
    query: dict, targets: list[str], cache_dir: Path, api_key: str | None = None, rester_factory=None
) -> Path:
    """Return the cached snapshot for (query, targets), downloading it first when absent."""
    path = snapshot_path(query, targets, cache_dir)
    if path.is_file():
        log.info("Using cached Materials Project snapshot %s", path)
        return path
    api_key = api_key or os.environ.get(API_KEY_VARIABLE)
    if not api_key:
        raise MissingApiKeyError(
            f"No cached Materials Project snapshot for this query at {path} and no API key to download it. "
            f"Set the {API_KEY_VARIABLE} environment variable (export {API_KEY_VARIABLE}=<your key from "
            f"https://next-gen.materialsproject.org/api>) or train offline from an existing file with "
            f"data.snapshot=PATH (or try the tool on its built-in offline demo data: crystal-train data=demo)."
        )
    # Runs started together (torchrun ranks, a sweep) download once: the others wait, then read it.
    with exclusive_lock(path.with_name(f"{path.name}.lock")):
        remove_unfinished_writes(path.parent, of=path.name)  # a download killed while saving; the lock says none is running
        if path.is_file():
            log.info("Using Materials Project snapshot %s, downloaded while this run waited", path)
            return path
        return download_snapshot(query, targets, api_key, cache_dir, rester_factory=rester_factory)


def download_snapshot(
    query: dict, targets: list[str], api_key: str, cache_dir: Path, rester_factory=None, chunk_size: int = 1000
) -> Path:
    """Query the summary endpoint and write the snapshot atomically; returns its path.

    `rester_factory(api_key)` must return a context manager like `mp_api.client.MPRester`.
    """
    from tqdm.auto import tqdm

    path = snapshot_path(query, targets, cache_dir)
    filters = search_kwargs(query)
    fields = list(dict.fromkeys(["material_id", "structure", *targets]))
    log.info("Downloading Materials Project summary data %s (fields %s) to %s", filters, fields, path)
    with (rester_factory or _mp_rester)(api_key) as rester:
        docs = rester.materials.summary.search(fields=fields, chunk_size=chunk_size, num_chunks=None, **filters)
        database_version = _database_version(rester)
    records = [_record(doc, targets) for doc in tqdm(docs, desc="Materials Project records", unit="material")]
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "query": query,
        "targets": list(targets),
        "database_version": database_version,
        "mp_api_version": package_version("mp-api"),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_records": len(records),
        "records": records,
    }
    atomic_write(path, lambda raw: _write_gzip_json(snapshot, raw))
    log.info("Wrote %d Materials Project records (database %s) to %s", len(records), database_version, path)
    return path


def search_kwargs(query: dict) -> dict:
    """Translate a config query into keyword arguments of mp-api's `SummaryRester.search`.

    Names are checked against the installed mp-api. A range field (e.g. ``energy_above_hull``,
    ``num_sites``) takes ``[min, max]`` (null for an open end) or ``<field>_min``/``<field>_max``.
    """
    from mp_api.client.routes.materials.summary import SummaryRester

    params = {
        name: param
        for name, param in inspect.signature(SummaryRester.search, eval_str=True).parameters.items()
        if name not in _RESERVED
    }
    kwargs: dict = {}
    bounds: dict[str, list] = {}
    for key, value in query.items():
        base, _, end = key.rpartition("_")
        if key not in params and end in ("min", "max") and _is_range(params.get(base)):
            bounds.setdefault(base, [None, None])[end == "max"] = value
        elif key in _RESERVED:
            raise ValueError(f"Materials Project query field {key!r} is set by crystal-train and cannot be given")
        elif key not in params:
            raise ValueError(
                f"unknown Materials Project query field {key!r}; mp-api {package_version('mp-api')} "
                f"summary search accepts: {', '.join(sorted(params))} (range fields also as <field>_min/_max)"
            )
        elif _is_range(params[key]):
            kwargs[key] = _range(key, value, params[key])
        else:
            kwargs[key] = _as_enum(key, value, params[key])
    for base, (low, high) in bounds.items():
        if base in kwargs:
            raise ValueError(f"Materials Project query gives both {base!r} and {base}_min/{base}_max")
        kwargs[base] = (low, high)
    return kwargs


def _as_enum(key: str, value, param: inspect.Parameter):
    """`value` as the member of the enum a field takes (magnetic_ordering: Ordering), found by value or name in any case, since
    mp-api reads the member's .value; other values as they are. ValueError listing the members for one that is none."""
    choices = [arg for arg in typing.get_args(param.annotation) if isinstance(arg, type) and issubclass(arg, Enum)]
    if not choices or not isinstance(value, str):
        return value
    enum = choices[0]
    for member in enum:
        if value.lower() in (str(member.value).lower(), member.name.lower()):
            return member
    raise ValueError(f"Materials Project query field {key!r} takes one of {', '.join(str(m.value) for m in enum)}; got {value!r}")


def _is_range(param: inspect.Parameter | None) -> bool:
    return param is not None and any(typing.get_origin(arg) is tuple for arg in typing.get_args(param.annotation))


def _range(key: str, value, param: inspect.Parameter):
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(value)
    if isinstance(value, (int, float)) and int in typing.get_args(param.annotation):
        return value
    raise ValueError(
        f"Materials Project query field {key!r} needs a [min, max] range (null for an open end) "
        f"or {key}_min/{key}_max; got {value!r}"
    )


def _mp_rester(api_key: str):
    from mp_api.client import MPRester

    return MPRester(api_key=api_key)


def _database_version(rester) -> str | None:
    version = getattr(rester, "db_version", None)
    if version is None and hasattr(rester, "get_database_version"):
        version = rester.get_database_version()
    return version


def _record(doc, targets: list[str]) -> dict:
    item_id = str(doc.material_id)
    return {
        "id": item_id,
        "structure": _structure_payload(doc.structure),
        "targets": {target: _number(getattr(doc, target, None), target, item_id) for target in targets},
    }


def _structure_payload(structure) -> dict | None:
    if structure is None:
        return None
    if not structure.is_ordered:
        return structure.as_dict()
    return {
        "lattice": structure.lattice.matrix.tolist(),
        "numbers": [int(z) for z in structure.atomic_numbers],
        "frac_coords": structure.frac_coords.tolist(),
    }


def _number(value, target: str, item_id: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Materials Project field {target!r} of {item_id} is not a number: {value!r}") from None


def _write_gzip_json(snapshot: dict, raw) -> None:
    """Write the snapshot as gzip JSON with a fixed header time, so equal data gives equal bytes."""
    with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped:
        with io.TextIOWrapper(zipped, encoding="utf-8") as text:
            json.dump(snapshot, text)
