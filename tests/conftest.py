"""Shared fixtures: the real train config composed for quick CPU runs in tmp_path, one short demo training, and small CSV snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from config_utils import compose_config
from crystal_train.training.run import train

# The shared datasets folder beside the checkout (CI has it; tests that read it skip without it).
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MP2018_SNAPSHOT = SHARED_DATASETS / "mp2018_megnet" / "mp2018_megnet_with_structures.csv.xz"

DEMO_OVERRIDES = ["data=demo", "data.num_crystals=120", "model.n_conv=2", "trainer.batch_size=32", "seed=7"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One short CGCNN training on the demo data, shared by the tests that eval or predict with it: (run dir, cache, best val MAE)."""
    root = tmp_path_factory.mktemp("demo_run")
    cfg = compose_config(
        "train",
        [*DEMO_OVERRIDES, f"data.cache_dir={root / 'cache'}", "trainer.device=cpu", "trainer.progress_bar=false", "trainer.max_epochs=3"],
    )
    run_dir = root / "run"
    run_dir.mkdir()
    best_val = train(cfg, run_dir)
    return run_dir, root / "cache", best_val


@pytest.fixture
def compose_train_cfg():
    """compose_train_cfg(overrides, tmp_path): the train config with the cache in tmp_path, on CPU, quiet."""

    def compose_cfg(overrides: list[str], tmp_path: Path):
        defaults = [f"data.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu", "trainer.progress_bar=false"]
        return compose_config("train", [*defaults, *overrides])

    return compose_cfg


def good_structures() -> dict[str, Structure]:
    """Five small ordered crystals of elements in the CGCNN table."""
    return {
        "mp-nacl": Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "mp-si": Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "mp-cu": Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "mp-mgo": Structure(Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "mp-cscl": Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }


def cif_text(structure: Structure) -> str:
    return str(CifWriter(structure))


def cif_folder(parent: Path, names: set[str] | None = None) -> Path:
    """parent/cifs holding a CIF file for each good structure (or those in `names`), named by its id."""
    folder = parent / "cifs"
    folder.mkdir()
    for item_id, structure in good_structures().items():
        if names is None or item_id in names:
            (folder / f"{item_id}.cif").write_text(cif_text(structure))
    return folder


@pytest.fixture
def write_csv(tmp_path):
    """write_csv(rows, name): a CSV snapshot in tmp_path from dicts with material_id, cif, targets (and split)."""

    def write(rows: list[dict], name: str = "data.csv") -> Path:
        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    return write


@pytest.fixture
def good_rows() -> list[dict]:
    """CSV rows of the five good structures with distinct labels."""
    return [
        {"material_id": item_id, "formation_energy_per_atom": -0.5 * (n + 1), "band_gap": 0.25 * n, "cif": cif_text(s)}
        for n, (item_id, s) in enumerate(good_structures().items())
    ]


@pytest.fixture
def umask_022():
    """Run the test under umask 022, so new files should be 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)
