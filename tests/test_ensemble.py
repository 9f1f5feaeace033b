"""crystal-eval and crystal-predict with several checkpoints: the mean prediction, the members' spread, refused mixes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from config_utils import compose_config
from conftest import cif_text, good_structures

from crystal_train.cli.evaluate import evaluate
from crystal_train.cli.predict import run_predict
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.ensemble import checkpoint_paths

SHIFT = 0.1  # eV/atom: the second member predicts the first's values plus this


@pytest.fixture
def two_members(demo_run, tmp_path):
    """The demo checkpoint and a copy whose normaliser mean is SHIFT higher, so it predicts exactly SHIFT more."""
    run_dir, _, _ = demo_run
    first = run_dir / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(first)
    second = tmp_path / "shifted.pt"
    save_checkpoint(second, **{**checkpoint, "normalizer": {**checkpoint["normalizer"], "mean": checkpoint["normalizer"]["mean"] + SHIFT}})
    return first, second


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_eval_of_two_checkpoints_scores_their_mean_and_reports_each(two_members, tmp_path):
    first, second = two_members
    alone = evaluate(compose_config("eval", [f"ckpt={first}", f"output={tmp_path / 'alone'}", "device=cpu"]))
    both = evaluate(compose_config("eval", [f"ckpt=[{first},{second}]", f"output={tmp_path / 'both'}", "device=cpu"]))

    single = {row["id"]: float(row["prediction"]) for row in _rows(tmp_path / "alone" / "predictions_test.csv")}
    assert list(_rows(tmp_path / "alone" / "predictions_test.csv")[0]) == ["id", "target", "prediction"]
    rows = _rows(tmp_path / "both" / "predictions_test.csv")
    assert list(rows[0]) == ["id", "target", "prediction", "member_std"]
    assert [row["id"] for row in rows] == list(single)
    for row in rows:
        assert float(row["prediction"]) == pytest.approx(single[row["id"]] + SHIFT / 2, abs=1e-9)
        assert float(row["member_std"]) == pytest.approx(SHIFT / 2, abs=1e-9)

    targets = np.array([float(row["target"]) for row in rows])
    mean = np.array([float(row["prediction"]) for row in rows])
    assert both["test"]["mae"] == pytest.approx(np.mean(np.abs(mean - targets)))
    assert [member["checkpoint"] for member in both["members"]] == [str(first), str(second)]
    assert both["members"][0]["test"] == alone["test"]
    shifted = np.array([single[row["id"]] + SHIFT for row in rows])
    assert both["members"][1]["test"]["mae"] == pytest.approx(np.mean(np.abs(shifted - targets)))
    assert both["checkpoint"] == [str(first), str(second)] and "members" not in alone
    assert json.loads((tmp_path / "both" / "metrics.json").read_text())["test"] == both["test"]


@pytest.mark.slow
def test_predict_with_two_checkpoints_writes_their_mean_and_spread(two_members, tmp_path):
    first, second = two_members
    folder = tmp_path / "cifs"
    folder.mkdir()
    for item_id, structure in good_structures().items():
        (folder / f"{item_id}.cif").write_text(cif_text(structure))
    alone = _rows(run_predict(compose_config("predict", [f"ckpt={first}", f"input={folder}", f"output={tmp_path / 'a.csv'}", "device=cpu"])))
    both = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{second}]", f"input={folder}", f"output={tmp_path / 'b.csv'}", "device=cpu"])))
    assert list(alone[0]) == ["id", "prediction", "unseen_elements"]
    assert list(both[0]) == ["id", "prediction", "member_std", "unseen_elements"]
    for one, two in zip(alone, both, strict=True):
        assert two["id"] == one["id"] and two["unseen_elements"] == one["unseen_elements"]
        assert float(two["prediction"]) == pytest.approx(float(one["prediction"]) + SHIFT / 2, abs=1e-9)
        assert float(two["member_std"]) == pytest.approx(SHIFT / 2, abs=1e-9)


@pytest.mark.slow
def test_unseen_elements_are_those_any_member_never_trained_on(two_members, tmp_path):
    """A member that trained on copper makes copper crystals no extrapolation for it, but the other never saw Cu."""
    first, second = two_members
    checkpoint = load_checkpoint(second)
    assert 29 in checkpoint["training_elements"]
    no_copper = tmp_path / "no_copper.pt"
    save_checkpoint(no_copper, **{**checkpoint, "training_elements": [z for z in checkpoint["training_elements"] if z != 29]})
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "cu.cif").write_text(cif_text(good_structures()["mp-cu"]))
    rows = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{no_copper}]", f"input={folder}", f"output={tmp_path / 'p.csv'}", "device=cpu"])))
    assert rows[0]["unseen_elements"] == "Cu"
    unrecorded = tmp_path / "unrecorded.pt"
    save_checkpoint(unrecorded, **{key: value for key, value in checkpoint.items() if key != "training_elements"})
    rows = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{unrecorded}]", f"input={folder}", f"output={tmp_path / 'q.csv'}", "device=cpu"])))
    assert "unseen_elements" not in rows[0]  # a member that cannot tell leaves the ensemble unable to tell


@pytest.mark.slow
def test_checkpoints_of_another_target_or_graph_are_refused_by_name(two_members, tmp_path):
    first, second = two_members
    checkpoint = load_checkpoint(second)
    gap = tmp_path / "gap.pt"
    save_checkpoint(gap, **{**checkpoint, "target": "band_gap", "units": "eV"})
    with pytest.raises(ValueError, match=re.escape(f"{gap} has target band_gap (eV) but {first} has target formation_energy_per_atom (eV/atom)")):
        evaluate(compose_config("eval", [f"ckpt=[{first},{gap}]", f"output={tmp_path / 'e'}", "device=cpu"]))
    config = checkpoint["config"]
    wider = tmp_path / "wider.pt"
    save_checkpoint(wider, **{**checkpoint, "config": {**config, "graph": {**config["graph"], "max_neighbors": 16}}})
    with pytest.raises(ValueError, match=re.escape(f"{wider} has graph settings cutoff 8.0 Å, max_neighbors 16 but {first} has graph settings cutoff 8.0 Å, max_neighbors 12")):
        run_predict(compose_config("predict", [f"ckpt=[{first},{wider}]", f"input={tmp_path}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    assert not (tmp_path / "e").exists() and not (tmp_path / "p.csv").exists()


def test_ckpt_takes_one_path_or_a_list_of_distinct_ones():
    assert checkpoint_paths("run/best.pt") == [Path("run/best.pt")]
    assert checkpoint_paths(compose_config("eval", ["ckpt=[a.pt,b.pt]"]).ckpt) == [Path("a.pt"), Path("b.pt")]
    with pytest.raises(ValueError, match="ckpt lists a.pt more than once"):
        checkpoint_paths(["a.pt", "b.pt", "a.pt"])
    with pytest.raises(ValueError, match=re.escape("ckpt=[]")):
        checkpoint_paths([])
    with pytest.raises(ValueError, match="ckpt lists 2 checkpoints: give output=FOLDER"):
        evaluate(compose_config("eval", ["ckpt=[a.pt,b.pt]", "device=cpu"]))
