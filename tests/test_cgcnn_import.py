"""Import of original CGCNN checkpoints (*.pth.tar): safe loading, clear errors, and predictions
equal to the reference model's.

The reference code (github.com/txie-93/cgcnn) is not installed and must not be copied, so the
equivalence check is `reference_prediction`: an independent re-implementation of the reference data
loader (CIFData: pymatgen neighbour lists padded to N x M) and forward pass (CrystalGraphConvNet)
written with torch.nn.functional calls on the checkpoint's raw tensors, never through
crystal_train.models.cgcnn.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATASETS
from graph_utils import make_batch
from omegaconf import OmegaConf

from crystal_train.training.evaluation import evaluate
from crystal_train.training.prediction import run_predict
from crystal_train.data.crystal import Crystal
from crystal_train.data.features import MAX_Z
from crystal_train.data.graphs import GraphSettings
from crystal_train.models.cgcnn import CGCNN
from crystal_train.models.cgcnn_import import SAFE_GLOBALS, convert_reference_checkpoint
from crystal_train.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model, model_from_checkpoint
from config_utils import compose_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SHARED_DATASETS / "cgcnn_sample" / "sample-regression"
ATOM_INIT = SAMPLE / "atom_init.json"
PRETRAINED = SHARED_DATASETS / "cgcnn_pretrained"
REGRESSION_CHECKPOINTS = ("formation-energy-per-atom", "band-gap")
USED_FILES = (
    ATOM_INIT, SAMPLE / "id_prop.csv",
    *(PRETRAINED / f"{name}.pth.tar" for name in (*REGRESSION_CHECKPOINTS, "semi-metal-classification")),
)
needs_datasets = pytest.mark.skipif(
    not all(path.is_file() for path in USED_FILES), reason=f"{SHARED_DATASETS} lacks the CGCNN sample or pretrained checkpoints"
)

# CIFData defaults of the reference
RADIUS, MAX_NUM_NBR, DMIN, STEP = 8.0, 12, 0.0, 0.2


def load_script():
    spec = importlib.util.spec_from_file_location("convert_cgcnn_checkpoint", REPO / "scripts" / "convert_cgcnn_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)}


# --- the independent reference --------------------------------------------------------------


def reference_inputs(cif: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(atom_fea (N, 92), nbr_fea (N, M, 41), nbr_fea_idx (N, M)) as the reference CIFData builds them."""
    from pymatgen.core import Structure

    elements = {int(key): np.array(value, dtype=float) for key, value in json.loads(ATOM_INIT.read_text()).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_file(cif)
    atom_fea = np.vstack([elements[site.specie.Z] for site in structure])
    all_nbrs = [sorted(nbrs, key=lambda nbr: nbr.nn_distance) for nbrs in structure.get_all_neighbors(RADIUS, include_index=True)]
    nbr_idx = np.zeros((len(structure), MAX_NUM_NBR), dtype=np.int64)
    nbr_dist = np.full((len(structure), MAX_NUM_NBR), RADIUS + 1.0)
    for i, nbrs in enumerate(all_nbrs):
        kept = nbrs[:MAX_NUM_NBR]
        nbr_idx[i, : len(kept)] = [nbr.index for nbr in kept]
        nbr_dist[i, : len(kept)] = [nbr.nn_distance for nbr in kept]
    centres = np.arange(DMIN, RADIUS + STEP, STEP)
    nbr_fea = np.exp(-((nbr_dist[..., np.newaxis] - centres) ** 2) / STEP**2)
    return torch.Tensor(atom_fea), torch.Tensor(nbr_fea), torch.from_numpy(nbr_idx)


def reference_forward(state: dict, atom_fea: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
    """CrystalGraphConvNet.forward for one crystal, eval mode, from the raw state_dict tensors: its outputs (one for
    regression; a classifier's two, before the log-softmax)."""

    def batch_norm(x, name):
        return F.batch_norm(
            x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=1e-5
        )

    x = F.linear(atom_fea, state["embedding.weight"], state["embedding.bias"])
    n, m = nbr_idx.shape
    width = x.shape[1]
    n_conv = sum(1 for key in state if key.endswith("fc_full.weight"))
    for k in range(n_conv):
        total = torch.cat([x.unsqueeze(1).expand(n, m, width), x[nbr_idx, :], nbr_fea], dim=2)
        gated = F.linear(total, state[f"convs.{k}.fc_full.weight"], state[f"convs.{k}.fc_full.bias"])
        gated = batch_norm(gated.view(-1, 2 * width), f"convs.{k}.bn1").view(n, m, 2 * width)
        nbr_filter, nbr_core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(nbr_filter) * F.softplus(nbr_core), dim=1)
        x = F.softplus(x + batch_norm(summed, f"convs.{k}.bn2"))
    crys = torch.mean(x, dim=0, keepdim=True)
    crys = F.softplus(F.linear(F.softplus(crys), state["conv_to_fc.weight"], state["conv_to_fc.bias"]))
    k = 0
    while f"fcs.{k}.weight" in state:
        crys = F.softplus(F.linear(crys, state[f"fcs.{k}.weight"], state[f"fcs.{k}.bias"]))
        k += 1
    return F.linear(crys, state["fc_out.weight"], state["fc_out.bias"])[0]


@cache
def reference_predictions(name: str) -> dict[str, float]:
    """Denormalised reference predictions of pretrained model `name` for the ten sample CIFs (a classifier's: the
    probability of class 1, the exponential of its log-softmax output 1)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):  # a classifier's best AUC is a numpy scalar
        raw = torch.load(PRETRAINED / f"{name}.pth.tar", map_location="cpu", weights_only=True)
    mean, std = float(raw["normalizer"]["mean"]), float(raw["normalizer"]["std"])
    predictions = {}
    with torch.no_grad():
        for cif in sorted(SAMPLE.glob("*.cif")):
            outputs = reference_forward(raw["state_dict"], *reference_inputs(cif))
            predictions[cif.stem] = float(torch.log_softmax(outputs, 0)[1].exp()) if len(outputs) == 2 else float(outputs[0]) * std + mean
    return predictions


# --- pretrained checkpoints ----------------------------------------------------------------


@needs_datasets
@pytest.mark.parametrize("name", REGRESSION_CHECKPOINTS)
def test_predict_matches_independent_reference(name, tmp_path):
    """crystal-predict on the original *.pth.tar agrees with the reference forward pass on every crystal."""
    cfg = compose_config(
        "predict",
        [f"ckpt={PRETRAINED / f'{name}.pth.tar'}", f"atom_init={ATOM_INIT}", f"input={SAMPLE}", f"output={tmp_path / 'preds.csv'}", "device=cpu"],
    )
    ours = read_predictions(run_predict(cfg))
    reference = reference_predictions(name)
    assert sorted(ours) == sorted(reference) and len(ours) == 10
    differences = {item: abs(ours[item] - reference[item]) for item in reference}
    assert max(differences.values()) < 1e-5, differences
    assert len(set(np.round(list(reference.values()), 3))) > 5  # ten distinct crystals, not a constant output


@needs_datasets
def test_pretrained_classifier_predicts_the_reference_probabilities(tmp_path):
    """The metal/semiconductor classifier, converted, gives the reference's probability of class 1 (metal) for every crystal."""
    original = PRETRAINED / "semi-metal-classification.pth.tar"
    converted = tmp_path / "metal.pt"
    assert load_script().main([str(original), "--atom-init", str(ATOM_INIT), "--output", str(converted)]) == 0
    assert load_checkpoint(converted)["normalizer"] == {"task": "classification", "positive_fraction": None}
    cfg = compose_config("predict", [f"ckpt={converted}", f"input={SAMPLE}", f"output={tmp_path / 'preds.csv'}", "device=cpu"])
    ours = read_predictions(run_predict(cfg))
    reference = reference_predictions("semi-metal-classification")
    assert sorted(ours) == sorted(reference) and len(ours) == 10
    assert max(abs(ours[item] - reference[item]) for item in reference) < 1e-5
    assert min(reference.values()) < 0.1 and max(reference.values()) > 0.5  # both classes among the ten, not a constant


@needs_datasets
def test_evaluate_converted_checkpoint_on_an_mp_csv_names_the_target_and_its_units(tmp_path, monkeypatch, write_csv, good_rows):
    monkeypatch.setenv("CRYSTAL_TRAIN_CACHE", str(tmp_path / "cache"))
    ckpt = PRETRAINED / "formation-energy-per-atom.pth.tar"
    base = [f"ckpt={ckpt}", f"atom_init={ATOM_INIT}", f"data.snapshot={write_csv(good_rows)}", "device=cpu"]
    report = evaluate(compose_config("eval", [*base, "data.target=formation_energy_per_atom", f"output={tmp_path / 'eval'}"]))
    assert (report["target"], report["units"], report["source"]["n"]) == ("formation_energy_per_atom", "eV/atom", len(good_rows))
    gap = evaluate(compose_config("eval", [*base, "data.target=band_gap", "data.units=eV_PBE", f"output={tmp_path / 'gap'}"]))
    assert (gap["target"], gap["units"]) == ("band_gap", "eV_PBE")
    with pytest.raises(ValueError, match=r"formation-energy-per-atom.pth.tar is an original CGCNN checkpoint, which records no data: give data"):
        evaluate(compose_config("eval", [*base[:2], "device=cpu", f"output={tmp_path / 'none'}"]))  # it would download MP data


@needs_datasets
def test_evaluate_converted_checkpoint_on_cgcnn_folder(tmp_path, monkeypatch):
    """crystal-eval scores the original checkpoint on a CGCNN folder: every crystal in one split, reference predictions."""
    monkeypatch.setenv("CRYSTAL_TRAIN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    ckpt = PRETRAINED / "formation-energy-per-atom.pth.tar"
    cfg = compose_config(
        "eval", [f"ckpt={ckpt}", f"atom_init={ATOM_INIT}", f"data.snapshot={SAMPLE}", "split=all", f"output={out}", "device=cpu"]
    )
    report = evaluate(cfg)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(report))
    assert (report["target"], report["units"]) == ("target", "")  # id_prop.csv does not say what its labels are
    assert sum(report[split]["n"] for split in ("train", "val", "test")) == 10
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert report["best_epoch"] == raw["epoch"] and report["checkpoint"] == str(ckpt)
    labels = {row[0]: float(row[1]) for row in csv.reader(open(SAMPLE / "id_prop.csv"))}
    reference = reference_predictions("formation-energy-per-atom")
    seen = {}
    for split in ("train", "val", "test"):
        with open(out / f"predictions_{split}.csv", newline="") as handle:
            seen.update({row["id"]: (float(row["target"]), float(row["prediction"])) for row in csv.DictReader(handle)})
    assert sorted(seen) == sorted(labels)
    for item, (target, prediction) in seen.items():
        assert target == labels[item]
        assert prediction == pytest.approx(reference[item], abs=1e-5)


@needs_datasets
def test_script_output_loads_and_predicts_identically(tmp_path, capsys):
    original = PRETRAINED / "formation-energy-per-atom.pth.tar"
    converted = tmp_path / "formation.pt"
    assert load_script().main([str(original), "--atom-init", str(ATOM_INIT), "--output", str(converted)]) == 0
    copy = tmp_path / "copy.pth.tar"  # never the shared file itself, should the check fail
    copy.write_bytes(original.read_bytes())
    for output, error in ((copy, "would replace an input"), (tmp_path / "converted.pth.tar", "ends in .pth.tar")):
        before = output.read_bytes() if output.exists() else None
        assert load_script().main([str(copy), "--atom-init", str(ATOM_INIT), "--output", str(output)]) == 1
        assert error in capsys.readouterr().err and (output.read_bytes() if output.exists() else None) == before
    checkpoint = load_checkpoint(converted)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["source_checkpoint"] == str(original)
    raw = torch.load(original, map_location="cpu", weights_only=True)
    assert checkpoint["normalizer"] == pytest.approx({"mean": float(raw["normalizer"]["mean"]), "std": float(raw["normalizer"]["std"])})
    assert checkpoint["config"]["model"]["n_conv"] == 4 and checkpoint["config"]["model"]["h_fea_len"] == 32
    _, from_original = load_model(original, atom_init=str(ATOM_INIT))
    _, from_converted = load_model(converted)
    for key, value in from_original.state_dict().items():
        assert torch.equal(value, from_converted.state_dict()[key]), key
    predictions = {}
    for name, ckpt, extra in (("original", original, [f"atom_init={ATOM_INIT}"]), ("converted", converted, [])):
        cfg = compose_config("predict", [f"ckpt={ckpt}", f"input={SAMPLE}", f"output={tmp_path / name}.csv", "device=cpu", *extra])
        predictions[name] = read_predictions(run_predict(cfg))
    assert predictions["converted"] == predictions["original"]
    assert len(predictions["converted"]) == 10


# --- synthetic reference-style checkpoints (no datasets needed) -------------------------------

SIZES = {"atom_fea_len": 8, "n_conv": 2, "h_fea_len": 6, "n_h": 2}


def write_reference_style(
    tmp_path: Path, task: str = "regression", gaussian_step: float = 0.2, outputs: int = 2, **arg_changes
) -> tuple[Path, Path, CGCNN]:
    """An old-style (non-zip) *.pth.tar laid out like the reference's, its atom_init.json, and the model it holds."""
    torch.manual_seed(0)
    table = torch.rand(9, 92).round()
    table[0] = 0
    model = CGCNN(**SIZES, gaussian_step=gaussian_step, atom_features=table).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    state = {k: v for k, v in model.state_dict().items() if k != "atom_features" and not k.endswith("num_batches_tracked")}
    if task == "classification":
        state["fc_out.weight"], state["fc_out.bias"] = torch.randn(outputs, SIZES["h_fea_len"]), torch.randn(outputs)  # `outputs` classes
    args = argparse.Namespace(task=task, lr=0.01, data_options=["root"], **{**SIZES, **arg_changes})
    checkpoint = {
        "epoch": 12,
        "state_dict": state,
        "best_mae_error": np.float64(0.9) if task == "classification" else 0.25,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "normalizer": {"mean": torch.tensor(1.5), "std": torch.tensor(2.0)},
        "args": args,
    }
    path = tmp_path / "model_best.pth.tar"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    atom_init = tmp_path / "atom_init.json"
    atom_init.write_text(json.dumps({str(z): table[z].tolist() for z in range(1, 9)}))
    return path, atom_init, model


def small_crystals() -> list[Crystal]:
    rng = np.random.default_rng(3)
    return [
        Crystal(id=f"c{i}", lattice=np.diag(rng.uniform(3.0, 4.0, 3)), numbers=rng.choice([1, 3, 8], 3), frac_coords=rng.random((3, 3)))
        for i in range(3)
    ]


def test_converted_model_equals_original(tmp_path):
    path, atom_init, model = write_reference_style(tmp_path)
    checkpoint = convert_reference_checkpoint(path, atom_init)
    assert checkpoint["normalizer"] == {"mean": 1.5, "std": 2.0}
    assert checkpoint["reference_args"]["lr"] == 0.01 and checkpoint["train_state"] == {"best_epoch": 12}
    assert checkpoint["config"]["model"] == {
        "_target_": "crystal_train.models.cgcnn.CGCNN", **SIZES, "gaussian_dmin": 0.0, "gaussian_dmax": 8.0, "gaussian_step": 0.2
    }
    assert checkpoint["config"]["graph"] == {"cutoff": 8.0, "max_neighbors": 12}
    packaged = OmegaConf.to_container(OmegaConf.load(REPO / "crystal_train" / "configs" / "data" / "mp_formation.yaml"))
    data = checkpoint["config"]["data"]
    assert data.keys() == packaged.keys() and data["split"] == packaged["split"]
    assert (data["target"], data["units"], data["snapshot"]) == ("target", None, None)
    table = checkpoint["model_state"]["atom_features"]
    assert table.shape == (MAX_Z + 1, 92) and torch.equal(table[:9], model.atom_features) and not table[9:].any()
    converted = model_from_checkpoint(checkpoint).eval()
    batch = make_batch(small_crystals(), GraphSettings(cutoff=8.0, max_neighbors=12), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(converted(batch), model(batch), rtol=0, atol=0)


def test_script_writes_loadable_checkpoint(tmp_path):
    path, atom_init, model = write_reference_style(tmp_path)
    output = tmp_path / "out" / "converted.pt"
    assert load_script().main([str(path), "--atom-init", str(atom_init), "--output", str(output)]) == 0
    checkpoint, converted = load_model(output)
    assert checkpoint["source_checkpoint"] == str(path)
    batch = make_batch(small_crystals(), GraphSettings(cutoff=8.0, max_neighbors=12), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(batch), model(batch), rtol=0, atol=0)


def test_a_classifiers_two_outputs_become_the_logit_of_class_one(tmp_path):
    """sigmoid(converted output) equals the reference's softmax over its two outputs, class 1, on the same hidden features."""
    path, atom_init, _ = write_reference_style(tmp_path, task="classification")
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        two_outputs = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    checkpoint = convert_reference_checkpoint(path, atom_init)
    assert checkpoint["normalizer"] == {"task": "classification", "positive_fraction": None}
    assert checkpoint["config"]["data"]["task"] == "classification"
    converted = model_from_checkpoint(checkpoint).eval()
    hidden = []
    converted.fc_out.register_forward_hook(lambda module, inputs, output: hidden.append(inputs[0]))
    batch = make_batch(small_crystals(), GraphSettings(cutoff=8.0, max_neighbors=12), dtype=torch.float32)
    with torch.no_grad():
        probability = torch.sigmoid(converted(batch))
        reference = torch.softmax(F.linear(hidden[0], two_outputs["fc_out.weight"], two_outputs["fc_out.bias"]), dim=1)[:, 1]
    torch.testing.assert_close(probability, reference, rtol=1e-6, atol=1e-6)
    assert reference.max() - reference.min() > 1e-3  # the crystals differ: the outputs are not a constant


def test_three_class_checkpoints_rejected(tmp_path):
    path, atom_init, _ = write_reference_style(tmp_path, task="classification", outputs=3)
    with pytest.raises(ValueError, match=re.escape(f"{path} is a classification checkpoint with 3 outputs: expected 1 for regression, 2")):
        convert_reference_checkpoint(path, atom_init)


def test_other_gaussian_sizes_rejected(tmp_path):
    path, atom_init, _ = write_reference_style(tmp_path, gaussian_step=0.5)
    with pytest.raises(ValueError, match=re.escape(f"{path} uses 17 edge features, not the 41")):
        convert_reference_checkpoint(path, atom_init)


def test_args_not_matching_weights_rejected(tmp_path):
    path, atom_init, _ = write_reference_style(tmp_path, n_h=1)
    with pytest.raises(ValueError, match=re.escape(f"{path}: the weights do not match the sizes in its args")):
        convert_reference_checkpoint(path, atom_init)


def test_atom_init_of_other_width_rejected(tmp_path):
    path, _, _ = write_reference_style(tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"1": [0.0] * 4, "8": [1.0] * 4}))
    with pytest.raises(ValueError, match=re.escape(f"{other} has 4 features per element but {path} expects 92")):
        convert_reference_checkpoint(path, other)


class _MakesDirectory:
    """Unpickling this would create a directory: a stand-in for arbitrary code in a pickle."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (str(self.target),)


@pytest.mark.parametrize("content", ["text", "code", "other_dict"])
def test_non_checkpoints_rejected_without_running_code(tmp_path, content):
    _, atom_init, _ = write_reference_style(tmp_path)
    path = tmp_path / "suspect.pth.tar"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "code":
        torch.save({"state_dict": {}, "args": _MakesDirectory(tmp_path / "pwned")}, path)
    else:
        torch.save({"model_state": {}}, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a CGCNN checkpoint")):
        convert_reference_checkpoint(path, atom_init)
    assert not (tmp_path / "pwned").exists()


def test_a_run_directory_given_as_checkpoint_points_to_its_best_pt(tmp_path):
    run_dir = tmp_path / "run1"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=re.escape(f"{run_dir} is a folder, not a checkpoint") + "$"):
        load_checkpoint(run_dir)  # nothing in it to point to
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=re.escape(f"did you mean {run_dir / 'checkpoints' / 'best.pt'}?")):
        load_checkpoint(run_dir)
    with pytest.raises(IsADirectoryError, match=re.escape(f"did you mean {run_dir / 'checkpoints' / 'best.pt'}?")):
        load_checkpoint(run_dir / "checkpoints")
