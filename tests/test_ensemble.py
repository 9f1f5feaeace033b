"""crystal-eval and crystal-predict with several checkpoints: the mean prediction, the members' spread, refused mixes."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from config_utils import compose_config
from scipy.stats import spearmanr
from conftest import cif_folder

from crystal_train.training.evaluation import evaluate
from crystal_train.training.prediction import run_predict
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.ensemble import checkpoint_paths
from crystal_train.training.metrics import spread_quality


def _variant(checkpoint: dict, path: Path, **changes) -> Path:
    save_checkpoint(path, **{**checkpoint, **changes})
    return path


@pytest.fixture
def two_members(demo_run, tmp_path):
    """The demo checkpoint and another model: every weight perturbed, trained (and so predicting) in bf16."""
    run_dir, _, _ = demo_run
    first = run_dir / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(first)
    generator = torch.Generator().manual_seed(3)
    weights = {
        key: value + 0.05 * value.abs().mean() * torch.randn(value.shape, generator=generator)
        if value.is_floating_point() and key != "atom_features" else value
        for key, value in checkpoint["model_state"].items()
    }
    config = {**checkpoint["config"], "trainer": {**checkpoint["config"]["trainer"], "precision": "bf16"}}
    return first, _variant(checkpoint, tmp_path / "other.pt", model_state=weights, config=config)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_eval_of_two_checkpoints_scores_their_mean_and_reports_each(two_members, tmp_path):
    first, second = two_members
    alone = [evaluate(compose_config("eval", [f"ckpt={ckpt}", f"output={tmp_path / ckpt.stem}", "device=cpu"])) for ckpt in two_members]
    both = evaluate(compose_config("eval", [f"ckpt=[{first},{second}]", f"output={tmp_path / 'both'}", "device=cpu"]))

    single = [_rows(tmp_path / ckpt.stem / "predictions_test.csv") for ckpt in two_members]
    assert list(single[0][0]) == ["id", "formula", "target", "prediction"]
    one, two = (np.array([float(row["prediction"]) for row in rows]) for rows in single)
    assert np.abs(one - two).min() > 1e-4  # really two different models
    rows = _rows(tmp_path / "both" / "predictions_test.csv")
    assert list(rows[0]) == ["id", "formula", "target", "prediction", "member_std"]
    assert [row["id"] for row in rows] == [row["id"] for row in single[0]]
    np.testing.assert_allclose([float(row["prediction"]) for row in rows], (one + two) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose([float(row["member_std"]) for row in rows], np.abs(one - two) / np.sqrt(2), rtol=1e-9)

    targets = np.array([float(row["target"]) for row in rows])
    assert both["test"]["mae"] == pytest.approx(np.mean(np.abs((one + two) / 2 - targets)))
    assert [member["checkpoint"] for member in both["members"]] == [str(first), str(second)]
    for member, scored_alone in zip(both["members"], alone, strict=True):
        assert member["test"] == scored_alone["test"] and member["best_epoch"] == scored_alone["best_epoch"] >= 1
    assert both["checkpoint"] == str(first) and both["best_epoch"] is None and "members" not in alone[0]
    assert json.loads((tmp_path / "both" / "metrics.json").read_text())["test"] == both["test"]
    spread = np.array([float(row["member_std"]) for row in rows])
    errors = np.abs((one + two) / 2 - targets)
    assert both["member_spread"]["test"] == pytest.approx(
        {"mean_spread": spread.mean(), "spearman_error_spread": spearmanr(errors, spread).statistic,
         "within_1_spread": np.mean(errors <= spread), "within_2_spread": np.mean(errors <= 2 * spread)}, abs=1e-6,
    )
    assert "member_spread" not in alone[0]  # one model has no spread


@pytest.mark.slow
def test_predict_with_two_checkpoints_writes_their_mean_and_spread(two_members, tmp_path):
    first, second = two_members
    folder = cif_folder(tmp_path)
    alone = [
        _rows(run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / ckpt.name}.csv", "device=cpu"])))
        for ckpt in two_members
    ]
    both = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{second}]", f"input={folder}", f"output={tmp_path / 'b.csv'}", "device=cpu"])))
    assert list(alone[0][0]) == ["id", "formula", "prediction", "unseen_elements", "structure_warnings"]
    assert list(both[0]) == ["id", "formula", "prediction", "member_std", "unseen_elements", "structure_warnings"]
    for row, one, two in zip(both, *alone, strict=True):
        assert row["id"] == one["id"] == two["id"] and row["unseen_elements"] == one["unseen_elements"]
        a, b = float(one["prediction"]), float(two["prediction"])
        assert float(row["prediction"]) == pytest.approx((a + b) / 2, abs=1e-12)
        assert float(row["member_std"]) == pytest.approx(abs(a - b) / np.sqrt(2), rel=1e-9)


@pytest.mark.slow
def test_unseen_elements_are_those_any_member_never_trained_on(two_members, tmp_path):
    """One member trained on copper, the other never saw it: copper crystals are extrapolations for the ensemble."""
    first, second = two_members
    checkpoint = load_checkpoint(second)
    assert 29 in checkpoint["training_elements"]
    no_copper = _variant(checkpoint, tmp_path / "no_copper.pt", training_elements=[z for z in checkpoint["training_elements"] if z != 29])
    folder = cif_folder(tmp_path, names={"mp-cu"})
    rows = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{no_copper}]", f"input={folder}", f"output={tmp_path / 'p.csv'}", "device=cpu"])))
    assert rows[0]["unseen_elements"] == "Cu"
    unrecorded = tmp_path / "unrecorded.pt"
    save_checkpoint(unrecorded, **{key: value for key, value in checkpoint.items() if key != "training_elements"})
    rows = _rows(run_predict(compose_config("predict", [f"ckpt=[{first},{unrecorded}]", f"input={folder}", f"output={tmp_path / 'q.csv'}", "device=cpu"])))
    assert "unseen_elements" not in rows[0]  # a member that cannot tell leaves the ensemble unable to tell


@pytest.mark.slow
def test_an_ensembles_n_train_is_its_members_when_they_agree_and_unknown_when_not(two_members, tmp_path):
    first, second = two_members
    checkpoint = load_checkpoint(second)
    counts = checkpoint["training_element_counts"]
    other_split = _variant(checkpoint, tmp_path / "other_split.pt", training_element_counts={**counts, 29: counts[29] + 1})
    old = tmp_path / "old.pt"  # a checkpoint from before the counts were recorded
    save_checkpoint(old, **{key: value for key, value in checkpoint.items() if key != "training_element_counts"})
    for members, name in (([first, second], "same"), ([first, other_split], "differ"), ([old], "old")):
        evaluate(compose_config("eval", [f"ckpt=[{','.join(map(str, members))}]", f"output={tmp_path / name}", "device=cpu"]))
    same, differ, unknown = ({row["z"]: row["n_train"] for row in _rows(tmp_path / name / "errors_by_element_test.csv")} for name in ("same", "differ", "old"))
    assert same == {z: str(counts.get(int(z), 0)) for z in same} and "29" in same
    assert set(differ.values()) == set(unknown.values()) == {""}


@pytest.mark.slow
def test_eval_warns_about_crystals_any_member_learned_from(two_members, tmp_path, caplog):
    first, second = two_members
    checkpoint = load_checkpoint(second)
    split = checkpoint["split_ids"]
    leaked = _variant(checkpoint, tmp_path / "leaked.pt", split_ids={**split, "train": split["train"] + split["test"][:2]})
    unsplit = tmp_path / "unsplit.pt"
    save_checkpoint(unsplit, **{key: value for key, value in checkpoint.items() if key != "split_ids"})
    with caplog.at_level(logging.WARNING):
        evaluate(compose_config("eval", [f"ckpt=[{first},{second}]", f"output={tmp_path / 'clean'}", "device=cpu"]))
    assert caplog.text == ""  # two members of one split, whose test split neither saw
    with caplog.at_level(logging.WARNING):
        evaluate(compose_config("eval", [f"ckpt=[{first},{second},{leaked},{unsplit}]", f"output={tmp_path / 'e'}", "device=cpu"]))
    assert f"2 of the {len(split['test'])} crystals scored as test were in the train split of {leaked} (" in caplog.text
    assert f"{unsplit} saved no split" in caplog.text
    assert str(first) not in caplog.text


@pytest.mark.slow
def test_checkpoints_of_another_target_or_graph_are_refused_by_name(two_members, tmp_path):
    first, second = two_members
    checkpoint = load_checkpoint(second)
    gap = _variant(checkpoint, tmp_path / "gap.pt", target="band_gap", units="eV")
    with pytest.raises(ValueError, match=re.escape(f"{gap} has target band_gap (eV, regression) but {first} has target formation_energy_per_atom (eV/atom, regression)")):
        evaluate(compose_config("eval", [f"ckpt=[{first},{gap}]", f"output={tmp_path / 'e'}", "device=cpu"]))
    config = checkpoint["config"]
    wider = _variant(checkpoint, tmp_path / "wider.pt", config={**config, "graph": {**config["graph"], "max_neighbors": 16}})
    expected = f"{wider} has graph settings cutoff 8.0 Å, max_neighbors 16 but {first} has graph settings cutoff 8.0 Å, max_neighbors 12"
    with pytest.raises(ValueError, match=re.escape(expected)):
        run_predict(compose_config("predict", [f"ckpt=[{first},{wider}]", f"input={cif_folder(tmp_path)}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    assert not (tmp_path / "e").exists() and not (tmp_path / "p.csv").exists()


def test_checkpoints_trained_on_different_data_are_named_in_a_warning(two_members, tmp_path, caplog):
    from crystal_train.training.ensemble import Ensemble

    first, second = two_members
    checkpoint = load_checkpoint(second)
    config = checkpoint["config"]
    on_mp = _variant(checkpoint, tmp_path / "mp.pt", config={**config, "data": {**config["data"], "snapshot": "/data/mp2018.csv.xz"}})
    with caplog.at_level(logging.WARNING):
        Ensemble.load([first, second], torch.device("cpu"))
    assert "different data" not in caplog.text  # two seeds of one dataset
    with caplog.at_level(logging.WARNING):
        Ensemble.load([first, on_mp], torch.device("cpu"))
    assert f"The checkpoints trained on different data ({first}: demo, 120 crystals, data.seed=0; {on_mp}: mp2018.csv.xz)" in caplog.text


def test_spread_quality_ranks_errors_against_spreads_and_counts_errors_within_them():
    rng = np.random.default_rng(0)
    targets, spread = rng.normal(size=500), rng.uniform(0.05, 1.0, 500)
    calibrated = targets + rng.normal(size=500) * spread  # errors drawn with the spread as standard deviation
    quality = spread_quality(targets, calibrated, spread)
    assert quality["spearman_error_spread"] == pytest.approx(spearmanr(np.abs(calibrated - targets), spread).statistic)
    assert quality["spearman_error_spread"] > 0.3 and abs(quality["within_1_spread"] - 0.68) < 0.06 and abs(quality["within_2_spread"] - 0.95) < 0.03
    blind = spread_quality(targets, targets + rng.normal(size=500) * 0.5, spread)  # errors that ignore the spread
    assert abs(blind["spearman_error_spread"]) < 0.1
    assert spread_quality(targets, calibrated, np.full(500, 0.3))["spearman_error_spread"] is None  # a constant spread ranks nothing
    one = spread_quality(targets[:1], calibrated[:1], spread[:1])
    assert one["spearman_error_spread"] is None and one["within_1_spread"] == float(abs(calibrated[0] - targets[0]) <= spread[0])
    broken = calibrated.copy()
    broken[7] = np.nan  # a member that diverged: no score, not a poor calibration
    assert set(spread_quality(targets, broken, spread).values()) == {None}
    assert set(spread_quality(targets[:0], calibrated[:0], spread[:0]).values()) == {None}


def test_ckpt_takes_one_path_or_a_list_of_different_files(tmp_path, monkeypatch):
    assert checkpoint_paths("run/best.pt") == [Path("run/best.pt")]
    assert checkpoint_paths(compose_config("eval", ["ckpt=[a.pt,b.pt]"]).ckpt) == [Path("a.pt"), Path("b.pt")]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"ckpt lists a.pt and {tmp_path / 'a.pt'}, the same file")):
        checkpoint_paths(["a.pt", "b.pt", str(tmp_path / "a.pt")])
    with pytest.raises(ValueError, match=re.escape("ckpt=[]")):
        checkpoint_paths([])
    with pytest.raises(ValueError, match="ckpt lists 2 checkpoints: give output=FOLDER"):
        evaluate(compose_config("eval", ["ckpt=[a.pt,b.pt]", "device=cpu"]))
