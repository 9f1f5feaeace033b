"""data.task=classification: binary classifiers (metals against non-metals), trained, scored and used like regressions."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from config_utils import compose_config
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.config_checks import check_settings
from crystal_train.training.evaluation import evaluate
from crystal_train.training.metrics import Normalizer, classification_metrics
from crystal_train.predictor import Predictor
from crystal_train.training.prediction import run_predict
from crystal_train.training.resume import ResumeConfigError, check_same_data, setting_changes
from crystal_train.training.run import train
from crystal_train.training.sweep import summarize_sweep
from crystal_train.training.tasks import ClassProbability, fit_output_transform, output_transform

# good_rows' band gaps are 0, 0.25, 0.5, 0.75 and 1 eV: mp-nacl alone is a metal
METAL_RUN = [
    "data=mp_metal", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=3", "trainer.batch_size=2",
    "model.atom_fea_len=8", "model.n_conv=1", "model.h_fea_len=8", "seed=0",
]


def test_classification_metrics_against_hand_counts():
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    probabilities = np.array([0.1, 0.6, 0.4, 0.9, 0.8])  # predicted classes 0 1 0 1 1
    scores = classification_metrics(labels, probabilities)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3)  # of three predicted 1, two are
    assert scores["recall"] == pytest.approx(2 / 3)  # of three 1s, two are found
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["roc_auc"] == pytest.approx(5 / 6)  # of the six (1, 0) pairs, all but (0.4, 0.6) are ranked right
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9, 0.8])))
    assert scores["n"] == 5
    one_class = classification_metrics(np.ones(3), np.array([0.2, 0.7, 0.9]))
    assert one_class["roc_auc"] is None and one_class["accuracy"] == pytest.approx(2 / 3)


def test_class_probability_is_the_sigmoid_of_the_logit_and_its_score_the_log_loss():
    transform = ClassProbability.fit(np.array([1.0, 0.0, 0.0, 0.0]))
    logits = np.array([-2.0, 0.0, 3.0])
    expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(transform.denormalize(logits), expected, rtol=1e-15)
    np.testing.assert_allclose(transform.denormalize(torch.tensor(logits)).numpy(), expected, rtol=1e-15)
    labels = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    errors = transform.validation_errors(torch.tensor(logits), labels).numpy()
    np.testing.assert_allclose(errors, [-np.log(1 - expected[0]), -np.log(expected[1]), -np.log(expected[2])], rtol=1e-12)
    # confidently wrong: the probabilities round to 1 and 0, and selection and metrics.json both count -ln(1e-15) each
    wrong = torch.tensor([60.0, -60.0], dtype=torch.float64)
    selection = transform.validation_errors(wrong, torch.tensor([0.0, 1.0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(selection, [-np.log(1e-15)] * 2, rtol=1e-4)  # 1 - (1 - 1e-15) is 1.1e-15 in float64
    reported = classification_metrics(np.array([0.0, 1.0]), transform.denormalize(wrong.numpy()))["log_loss"]
    assert reported == pytest.approx(selection.mean(), rel=1e-12)
    baseline = transform.baseline(np.array([0.0, 0.0, 1.0, 0.0]))  # the majority class is 0, the share of class 1 a quarter
    assert baseline == {"baseline_test_accuracy": 0.75, "baseline_test_log_loss": pytest.approx(-(3 * np.log(0.75) + np.log(0.25)) / 4)}
    with pytest.raises(ValueError, match=r"all 3 training crystals are of class 0 \(band_gap <= 0\): a classifier needs both"):
        ClassProbability.fit(np.zeros(3), "band_gap <= 0")
    restored = output_transform(transform.state())
    assert isinstance(restored, ClassProbability) and restored.positive_fraction == 0.25
    regression = fit_output_transform("regression", np.array([1.0, 3.0]), minimum=0.0)
    assert output_transform(regression.state()) == regression == Normalizer(2.0, 1.0, 0.0)


def test_classes_from_a_number_and_labels_that_are_not_classes(compose_train_cfg, write_csv, good_rows, tmp_path):
    cfg = compose_train_cfg(["data=mp_metal", f"data.snapshot={write_csv(good_rows)}"], tmp_path)
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    labels = dict(zip(data.store.ids, data.store.targets))
    assert labels == {"mp-nacl": 1.0, "mp-si": 0.0, "mp-cu": 0.0, "mp-mgo": 0.0, "mp-cscl": 0.0}
    assert (data.target, data.units) == ("band_gap <= 0", "")

    rows = [dict(row, is_metal=float(n == 0)) for n, row in enumerate(good_rows)]
    own = compose_train_cfg(
        ["data=mp_metal", f"data.snapshot={write_csv(rows, 'own.csv')}", "data.target=is_metal", "data.positive_at_most=null"], tmp_path
    )
    assert dict(zip(*(lambda d: (d.store.ids, d.store.targets))(prepare_data(own.data, graph_settings(own.graph))))) == labels
    text = [dict(row, is_metal=("true" if n == 0 else " False")) for n, row in enumerate(good_rows)]  # as text, any case
    spelled = compose_train_cfg(
        ["data=mp_metal", f"data.snapshot={write_csv(text, 'text.csv')}", "data.target=is_metal", "data.positive_at_most=null"], tmp_path
    )
    assert dict(zip(*(lambda d: (d.store.ids, d.store.targets))(prepare_data(spelled.data, graph_settings(spelled.graph))))) == labels
    rows[3]["is_metal"] = 2.0
    wrong = compose_train_cfg(
        ["data=mp_metal", f"data.snapshot={write_csv(rows, 'wrong.csv')}", "data.target=is_metal", "data.positive_at_most=null"], tmp_path
    )
    with pytest.raises(ValueError, match=r"labels 0 and 1 in is_metal, but 1 crystal\(s\) have other values: mp-mgo \(2\)"):
        prepare_data(wrong.data, graph_settings(wrong.graph))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.task=ranking"], "data.task must be one of regression, classification, not 'ranking'"),
        (["data=mp_gap", "data.task=classification"], "data.target_min=0.0 floors a regression's predictions"),
        (["data.positive_at_most=0"], "add data.task=classification, or drop data.positive_at_most"),
    ],
)
def test_settings_of_the_other_task_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_settings(compose_config("train", overrides))


def test_a_regression_loss_set_for_a_classifier_is_named_in_a_warning(caplog):
    check_settings(compose_config("train", ["data=mp_metal"]))
    assert "trainer.loss" not in caplog.text
    check_settings(compose_config("train", ["data=mp_metal", "trainer.loss=l1"]))
    assert "trainer.loss=l1 is a regression setting: a classifier trains on binary cross-entropy" in caplog.text


def test_a_checkpoint_from_before_data_task_resumes_as_the_regression_it_was():
    current = {"data": {"task": "regression", "positive_at_most": None, "target": "band_gap"}}
    assert setting_changes({"data": {"target": "band_gap"}}, current) == {}
    classifier = {"data": {"task": "classification", "positive_at_most": 0.0, "target": "band_gap"}}
    assert set(setting_changes({"data": {"target": "band_gap"}}, classifier)) == {"data.task", "data.positive_at_most"}


def test_a_resume_on_labels_that_changed_is_refused_naming_the_share_of_class_one(tmp_path):
    saved = {"split_ids": {"train": ["a", "b"]}, "normalizer": {"task": "classification", "positive_fraction": 0.5}}
    check_same_data(saved, {"train": ["a", "b"]}, {"task": "classification", "positive_fraction": 0.5}, tmp_path / "last.pt")
    with pytest.raises(ResumeConfigError, match=r"the training targets changed \(share of class 1 0.5 -> 1\)"):
        check_same_data(saved, {"train": ["a", "b"]}, {"task": "classification", "positive_fraction": 1.0}, tmp_path / "last.pt")


@pytest.fixture
def metal_run(compose_train_cfg, write_csv, good_rows, tmp_path):
    """A three-epoch metal classifier on the five good structures, its config and run directory."""
    rows = [row | {"split": split} for row, split in zip(good_rows, ["train", "val", "train", "test", "val"])]
    rows += [dict(row, material_id=f"{row['material_id']}-b", split="train") for row in good_rows]  # both classes in train
    cfg = compose_train_cfg([*METAL_RUN, f"data.snapshot={write_csv(rows)}"], tmp_path)
    run_dir = tmp_path / "run"
    best = train(cfg, run_dir)
    return cfg, run_dir, best


def test_schnet_trains_as_a_classifier_too(compose_train_cfg, write_csv, good_rows, tmp_path):
    rows = [row | {"split": split} for row, split in zip(good_rows * 2, ["train", "val", "train", "test", "val"] + ["train"] * 5)]
    rows = [dict(row, material_id=f"{row['material_id']}-{n}") for n, row in enumerate(rows)]
    cfg = compose_train_cfg([
        "data=mp_metal", f"data.snapshot={write_csv(rows)}", "model=schnet", "model.hidden_channels=8", "model.num_filters=8",
        "model.num_interactions=1", "trainer.max_epochs=2", "trainer.batch_size=2", "seed=0",
    ], tmp_path)
    best = train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["val"]["log_loss"] == pytest.approx(best, rel=1e-5)
    with open(tmp_path / "run" / "predictions_test.csv", newline="") as handle:
        assert all(0.0 < float(row["prediction"]) < 1.0 for row in csv.DictReader(handle))


def test_a_classifier_trains_selects_on_log_loss_and_reports_class_metrics(metal_run):
    cfg, run_dir, best = metal_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "classification" and (metrics["target"], metrics["units"]) == ("band_gap <= 0", "")
    assert set(metrics["val"]) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "n"}
    with open(run_dir / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert list(history[0]) == ["epoch", "lr", "train_loss", "train_log_loss", "val_log_loss", "seconds"]
    best_row = min(history, key=lambda row: float(row["val_log_loss"]))
    assert best == pytest.approx(float(best_row["val_log_loss"])) and metrics["best_epoch"] == int(best_row["epoch"])
    assert metrics["val"]["log_loss"] == pytest.approx(best, rel=1e-5)  # the selected model's validation log loss, recomputed
    assert metrics["baseline_test_accuracy"] == 1.0  # the training majority (5 of 7 are no metal) is right for MgO, the test crystal
    with open(run_dir / "predictions_test.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["id"] == "mp-mgo" and row["target"] == "0.0" and 0.0 < float(row["prediction"]) < 1.0
    assert (run_dir / "roc_test.png").stat().st_size > 0 and not (run_dir / "parity_test.png").exists()
    with open(run_dir / "errors_by_element_test.csv", newline="") as handle:  # MgO's two elements, scored as its row
        assert [(row["element"], row["n"], float(row["log_loss"])) for row in csv.DictReader(handle)] == [
            ("O", "1", pytest.approx(metrics["test"]["log_loss"], rel=1e-5)), ("Mg", "1", pytest.approx(metrics["test"]["log_loss"], rel=1e-5)),
        ]
    saved = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert saved["normalizer"] == {"task": "classification", "positive_fraction": pytest.approx(2 / 7)}


def test_eval_and_predict_give_the_classifiers_probabilities(metal_run, tmp_path):
    cfg, run_dir, _ = metal_run
    best = run_dir / "checkpoints" / "best.pt"
    report = evaluate(compose_config("eval", [f"ckpt={best}", "split=all", f"output={tmp_path / 'eval'}", "device=cpu"]))
    trained = json.loads((run_dir / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert report[split].keys() == trained[split].keys()
        for name, value in trained[split].items():  # a one-crystal split's ROC AUC is None
            assert report[split][name] == (None if value is None else pytest.approx(value, rel=1e-6)), (split, name)
    with open(tmp_path / "eval" / "predictions_test.csv", newline="") as handle:
        (scored,) = csv.DictReader(handle)
    predicted = run_predict(compose_config("predict", [f"ckpt={best}", f"input={_mgo_cif(tmp_path)}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    with open(predicted, newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert float(row["prediction"]) == pytest.approx(float(scored["prediction"]), rel=1e-6)
    predictor = Predictor(best, device="cpu")
    assert predictor.task == "classification" and predictor.units == ""
    assert predictor.predict(_mgo_cif(tmp_path))["prediction"][0] == pytest.approx(float(row["prediction"]), rel=1e-6)


def test_eval_on_another_column_reads_its_labels_not_the_training_columns_rule(metal_run, write_csv, good_rows, tmp_path):
    """A classifier trained on band_gap <= 0, scored on a 0/1 column: the rule is not applied to the column's labels."""
    _, run_dir, _ = metal_run
    rows = [dict(row, is_metal=float(n == 0)) for n, row in enumerate(good_rows)]
    base = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"data.snapshot={write_csv(rows, 'metal.csv')}", "device=cpu"]
    report = evaluate(compose_config("eval", [*base, "data.target=is_metal", f"output={tmp_path / 'column'}"]))
    assert report["target"] == "is_metal" and report["source"]["accuracy"] is not None
    with open(tmp_path / "column" / "predictions_source.csv", newline="") as handle:
        labels = {row["id"]: float(row["target"]) for row in csv.DictReader(handle)}
    assert labels == {"mp-nacl": 1.0, "mp-si": 0.0, "mp-cu": 0.0, "mp-mgo": 0.0, "mp-cscl": 0.0}  # not flipped by "<= 0"
    by_gap = evaluate(compose_config("eval", [*base, f"output={tmp_path / 'gap'}"]))  # the training's own column and rule
    assert by_gap["target"] == "band_gap <= 0"
    assert [by_gap["source"][name] for name in ("accuracy", "log_loss")] == [report["source"][name] for name in ("accuracy", "log_loss")]


def test_a_run_saved_with_best_val_mae_resumes(metal_run):
    """Checkpoints written before the score was renamed (train_state's best_val_mae) resume with their best kept."""
    cfg, run_dir, best = metal_run
    last = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    checkpoint["train_state"]["best_val_mae"] = checkpoint["train_state"].pop("best_val_score")
    save_checkpoint(last, **checkpoint)
    cfg.trainer.max_epochs = 4
    resumed = train(cfg, run_dir)
    with open(run_dir / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 4 and resumed == pytest.approx(min(float(row["val_log_loss"]) for row in history))
    assert resumed <= best


def test_a_sweep_of_classifiers_is_summarised_by_their_scores(metal_run):
    _, run_dir, best = metal_run
    path, failed, jobs = summarize_sweep(run_dir.parent, output_subdir=None)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        (row,) = list(reader)
    assert "val_log_loss" in reader.fieldnames and "val_mae" not in reader.fieldnames
    assert (failed, jobs, row["status"]) == (0, 1, "ok") and float(row["val_log_loss"]) == pytest.approx(best, rel=1e-5)
    assert math.isfinite(float(row["test_accuracy"]))


def _mgo_cif(tmp_path):
    from conftest import cif_text, good_structures

    path = tmp_path / "mp-mgo.cif"
    path.write_text(cif_text(good_structures()["mp-mgo"]))
    return path
