"""Tests for Materials Project snapshots, with a fake MPRester (no network)."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_train.data import materials_project as mp
from crystal_train.data.sources import load_source, to_crystal
from crystal_train.secrets_guard import take_api_key_argument

API_KEY = "fakeKey0123456789abcdefABCDEF0123"
QUERY = {"deprecated": False, "num_sites": [1, 200], "energy_above_hull_max": 0.1, "exclude_elements": ["He"]}
TARGETS = ["formation_energy_per_atom", "band_gap"]


def _docs() -> list[SimpleNamespace]:
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return [
        SimpleNamespace(material_id="mp-22862", structure=nacl, formation_energy_per_atom=-2.1, band_gap=5.0),
        SimpleNamespace(material_id="mp-149", structure=si, formation_energy_per_atom=0.0, band_gap=0.6),
        SimpleNamespace(material_id="mp-999", structure=si, formation_energy_per_atom=0.2, band_gap=None),
    ]


class FakeRester:
    """Stands in for mp_api.client.MPRester: records the key and the search arguments."""

    def __init__(self, api_key: str, docs=None, fail: bool = False):
        self.api_key = api_key
        self.searches: list[dict] = []
        self.materials = SimpleNamespace(summary=SimpleNamespace(search=self._search))
        self._docs = _docs() if docs is None else docs
        self._fail = fail

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _search(self, **kwargs):
        self.searches.append(kwargs)
        if self._fail:
            raise ConnectionError("network down")
        return self._docs

    def get_database_version(self) -> str:
        return "2025.09.25"


class Factory:
    def __init__(self, **options):
        self.options = options
        self.made: list[FakeRester] = []

    def __call__(self, api_key: str) -> FakeRester:
        self.made.append(FakeRester(api_key, **self.options))
        return self.made[-1]


def _refuse(api_key):
    raise AssertionError("the client must not be constructed when the snapshot is cached")


def _read(path: Path) -> dict:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def test_download_then_offline_reload(tmp_path):
    factory = Factory()
    path = mp.resolve_mp_snapshot(QUERY, TARGETS, tmp_path, api_key=API_KEY, rester_factory=factory)
    assert path.parent == tmp_path and path.name.endswith(".json.gz")
    (search,) = factory.made[0].searches
    assert search == {
        "fields": ["material_id", "structure", "formation_energy_per_atom", "band_gap"],
        "chunk_size": 1000,
        "num_chunks": None,
        "deprecated": False,
        "num_sites": (1, 200),
        "energy_above_hull": (None, 0.1),
        "exclude_elements": ["He"],
    }
    snapshot = _read(path)
    assert snapshot["format"] == mp.SNAPSHOT_FORMAT and snapshot["version"] == mp.SNAPSHOT_VERSION
    assert snapshot["query"] == QUERY and snapshot["targets"] == TARGETS
    assert snapshot["database_version"] == "2025.09.25"
    assert snapshot["mp_api_version"]
    assert datetime.fromisoformat(snapshot["created_utc"]).utcoffset().total_seconds() == 0
    assert snapshot["num_records"] == 3

    again = mp.resolve_mp_snapshot(QUERY, list(reversed(TARGETS)), tmp_path, rester_factory=_refuse)
    assert again == path
    data = load_source(again, "band_gap")
    assert data.layout == "snapshot" and data.metadata["database_version"] == "2025.09.25"
    assert [(i.id, i.target) for i in data.items] == [("mp-22862", 5.0), ("mp-149", 0.6)]
    assert data.skipped == [("mp-999", "missing label")]
    crystal = to_crystal(data.items[0])
    nacl = _docs()[0].structure
    np.testing.assert_allclose(crystal.lattice, nacl.lattice.matrix)
    assert crystal.numbers.tolist() == [11, 17]
    np.testing.assert_allclose(crystal.frac_coords, nacl.frac_coords)


def test_api_key_is_never_written_or_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MP_API_KEY", API_KEY)
    factory = Factory()
    with caplog.at_level(logging.DEBUG):
        mp.resolve_mp_snapshot(QUERY, TARGETS, tmp_path, rester_factory=factory)
    assert factory.made[0].api_key == API_KEY  # taken from the environment
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    snapshot = mp.snapshot_path(QUERY, TARGETS, tmp_path)
    assert sorted(files) == [snapshot, snapshot.with_name(f"{snapshot.name}.lock")]  # the snapshot and its empty download lock
    for file in files:
        content = file.read_bytes()
        content = gzip.decompress(content) if file.name.endswith(".gz") else content
        assert API_KEY.encode() not in content
    assert caplog.records and all(API_KEY not in record.getMessage() for record in caplog.records)


def test_no_key_and_no_snapshot_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(mp.MissingApiKeyError) as error:
        mp.resolve_mp_snapshot(QUERY, TARGETS, tmp_path, rester_factory=_refuse)
    message = str(error.value)
    assert "MP_API_KEY" in message and "data.snapshot=PATH" in message and str(tmp_path) in message and "crystal-train data=demo" in message


def test_runs_started_together_download_the_snapshot_once(tmp_path):
    factory, start, paths = Factory(), threading.Barrier(3), []

    def slow_factory(api_key):
        time.sleep(0.3)  # a download long enough for the other runs to arrive meanwhile
        return factory(api_key)

    def run():
        start.wait()
        paths.append(mp.resolve_mp_snapshot(QUERY, TARGETS, tmp_path, api_key=API_KEY, rester_factory=slow_factory))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(factory.made) == 1
    assert len(paths) == 3 and len(set(paths)) == 1 and _read(paths[0])["num_records"] == 3


def test_failed_download_leaves_no_file(tmp_path):
    with pytest.raises(ConnectionError):
        mp.download_snapshot(QUERY, TARGETS, API_KEY, tmp_path, rester_factory=Factory(fail=True))
    assert list(tmp_path.iterdir()) == []


def test_a_download_killed_while_saving_leaves_a_temporary_the_next_one_removes(tmp_path):
    path = mp.snapshot_path(QUERY, TARGETS, tmp_path)
    (tmp_path / f".{path.name}.x1y2.tmp").write_bytes(b"half a snapshot")  # the kill came mid-write
    other = tmp_path / ".other-query.json.gz.x3y4.tmp"  # another query's download, perhaps being written now
    other.write_bytes(b"")
    assert mp.resolve_mp_snapshot(QUERY, TARGETS, tmp_path, api_key=API_KEY, rester_factory=Factory()) == path
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == [other.name]


def test_snapshot_path_depends_on_query_and_targets(tmp_path):
    base = mp.snapshot_path(QUERY, TARGETS, tmp_path)
    assert mp.snapshot_path(dict(reversed(QUERY.items())), list(reversed(TARGETS)), tmp_path) == base
    assert mp.snapshot_path({**QUERY, "deprecated": True}, TARGETS, tmp_path) != base
    assert mp.snapshot_path(QUERY, ["band_gap"], tmp_path) != base
    with pytest.raises(TypeError, match="JSON-serialisable"):
        mp.snapshot_path({"elements": {"Si"}}, TARGETS, tmp_path)


def test_search_kwargs_validation():
    assert mp.search_kwargs({"num_elements": 2, "band_gap_min": 0.5, "elements": ["O"]}) == {
        "num_elements": 2,
        "elements": ["O"],
        "band_gap": (0.5, None),
    }
    with pytest.raises(ValueError, match="'energy_above_hull' needs a \\[min, max\\] range"):
        mp.search_kwargs({"energy_above_hull": 0.1})
    with pytest.raises(ValueError, match="unknown Materials Project query field 'nsites'.*num_sites"):
        mp.search_kwargs({"nsites": [1, 5]})
    with pytest.raises(ValueError, match="'fields' is set by crystal-train"):
        mp.search_kwargs({"fields": ["volume"]})
    with pytest.raises(ValueError, match="both 'band_gap' and band_gap_min/band_gap_max"):
        mp.search_kwargs({"band_gap": [0, 1], "band_gap_max": 2})


def test_search_kwargs_are_understood_by_installed_mp_api(monkeypatch):
    """The real SummaryRester.search turns our kwargs into API query parameters (no request sent)."""
    from mp_api.client.core.client import BaseRester
    from mp_api.client.routes.materials.summary import SummaryRester

    sent = {}
    monkeypatch.setattr(BaseRester, "_search", lambda self, **params: sent.update(params) or [])
    rester = SummaryRester.__new__(SummaryRester)  # skip __init__, which contacts the server
    rester.search(fields=["material_id"], chunk_size=10, num_chunks=None, **mp.search_kwargs(QUERY))
    assert {k: sent[k] for k in ("deprecated", "nsites_min", "nsites_max", "energy_above_hull_max", "exclude_elements")} == {
        "deprecated": False,
        "nsites_min": 1,
        "nsites_max": 200,
        "energy_above_hull_max": 0.1,
        "exclude_elements": "He",
    }
    assert "energy_above_hull_min" not in sent
    sent.clear()  # a field mp-api types as an enum, given as text in a config
    rester.search(fields=["material_id"], chunk_size=10, num_chunks=None, **mp.search_kwargs({"magnetic_ordering": "fm", "crystal_system": "Cubic"}))
    assert (sent["ordering"], sent["crystal_system"]) == ("FM", "Cubic")
    with pytest.raises(ValueError, match="'magnetic_ordering' takes one of FM, AFM, FiM, NM, Unknown; got 'ferro'"):
        mp.search_kwargs({"magnetic_ordering": "ferro"})


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CRYSTAL_TRAIN_CACHE", str(tmp_path / "cache"))
    assert mp.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("CRYSTAL_TRAIN_CACHE")
    assert mp.default_cache_dir() == Path.home() / ".cache" / "crystal-train"


@pytest.mark.slow
def test_training_from_mp_download_keeps_the_key_out_of_every_file(tmp_path, monkeypatch, compose_train_cfg, caplog):
    """data.api_key on the command line: download with the fake client, train, then reload offline."""
    from crystal_train.training.run import train

    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.setattr(mp, "_mp_rester", Factory(docs=_docs() * 1))
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- data.api_key={API_KEY}\n")  # as Hydra writes it
    (tmp_path / "multirun.yaml").write_text(f"task:\n- data.api_key={API_KEY}\n")  # a multirun's copy
    overrides = [f"data.api_key={API_KEY}", "trainer.max_epochs=1", "model.n_conv=1", "data.split.fractions=[0.34,0.33,0.33]"]
    with caplog.at_level(logging.INFO, logger="crystal_train.data.dataset"):
        train(compose_train_cfg(overrides, tmp_path), run_dir)
    assert (run_dir / "metrics.json").is_file()
    assert any("(snapshot layout, MP database 2025.09.25)" in record.getMessage() for record in caplog.records)
    for path in [*run_dir.rglob("*"), *(tmp_path / "cache").rglob("*"), tmp_path / "multirun.yaml"]:
        if path.is_file():
            content = path.read_bytes()
            if path.suffix == ".gz":
                content = gzip.decompress(content)
            assert API_KEY.encode() not in content, path
    monkeypatch.setattr(mp, "_mp_rester", _refuse)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    train(compose_train_cfg(["trainer.max_epochs=1", "model.n_conv=1", "data.split.fractions=[0.34,0.33,0.33]"], tmp_path), tmp_path / "offline")
    assert (tmp_path / "offline" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_key_on_the_command_line_reaches_no_file_or_folder_name_of_a_sweep(tmp_path):
    """crystal-train -m with data.api_key=KEY, job folders named after the overrides and config copies moved: the key
    is taken off the command line before Hydra sees it (the demo data needs no key; it is taken all the same)."""
    crystal_train = str(Path(sys.executable).parent / "crystal-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MP_API_KEY": ""}
    sweep = tmp_path / "sweep"
    command = [
        crystal_train, "-m", "data=demo", "data.num_crystals=60", "model.n_conv=1", "trainer.max_epochs=1", "trainer.device=cpu",
        "trainer.progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}", f"data.api_key={API_KEY}", "hydra.output_subdir=hydra_copies",
        f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=jobs/${hydra.job.override_dirname}",
    ]
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(sweep / "sweep_summary.csv", newline="") as handle:  # the summary finds the nested job and its overrides
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok" and "data=demo" in row["overrides"] and "api_key" not in row["overrides"]
    assert (Path(row["run_dir"]) / "metrics.json").is_file() and (Path(row["run_dir"]) / "hydra_copies" / "overrides.yaml").is_file()
    unbuildable = [crystal_train, "-m", "data=demo", "model=cgcnn,no_such_model", f"+data.api_key={API_KEY}", f"hydra.sweep.dir={tmp_path / 'refused'}"]
    refused = subprocess.run(unbuildable, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and (tmp_path / "refused" / "multirun.yaml").is_file()  # written before the sweep failed
    (tmp_path / "conf" / "data").mkdir(parents=True)  # a key in a config file: out of multirun.yaml too, though no job ran
    (tmp_path / "conf" / "data" / "keyed.yaml").write_text(f"defaults: [demo, _self_]\napi_key: {API_KEY}\n")
    in_file = [crystal_train, "-m", "--config-dir", str(tmp_path / "conf"), "data=keyed", "model=cgcnn,no_such_model", f"hydra.sweep.dir={tmp_path / 'in_file'}"]
    refused_too = subprocess.run(in_file, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert refused_too.returncode != 0 and (tmp_path / "in_file" / "multirun.yaml").is_file()
    everything = [path for path in tmp_path.rglob("*") if "cache" not in path.parts and "conf" not in path.parts]
    assert [path for path in everything if API_KEY in str(path) or (path.is_file() and API_KEY.encode() in path.read_bytes())] == []
    assert API_KEY not in completed.stdout + completed.stderr + refused.stdout + refused.stderr + refused_too.stdout + refused_too.stderr


def test_snapshot_is_readable_like_any_new_file(tmp_path, umask_022):
    path = mp.download_snapshot(QUERY, TARGETS, API_KEY, tmp_path, rester_factory=Factory())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _read(path)["num_records"] == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_the_key_is_taken_off_the_command_line_into_this_process_only(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    kept = take_api_key_argument(["data=mp_gap", f"data.api_key={API_KEY}", "seed=1"])
    assert kept == ["data=mp_gap", "seed=1"] and os.environ["MP_API_KEY"] == API_KEY
    monkeypatch.delenv("MP_API_KEY")
    assert take_api_key_argument([f"++data.api_key='{API_KEY}'"]) == [] and os.environ["MP_API_KEY"] == API_KEY
    monkeypatch.delenv("MP_API_KEY")
    assert take_api_key_argument(["data.api_key=null", "data.api_key_file=x"]) == ["data.api_key_file=x"] and "MP_API_KEY" not in os.environ
