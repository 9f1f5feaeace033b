"""trainer.init_from: a training that starts from another checkpoint's weights."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from config_utils import compose_config
from conftest import SHARED_DATASETS
from crystal_train.models.cgcnn_import import convert_reference_checkpoint
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.freezing import freeze_layers
from crystal_train.training.initial_weights import check_same_architecture, starting_model
from crystal_train.training.resume import ResumeConfigError, check_same_training
from crystal_train.training.run import train

SMALL = ["data=demo", "data.num_crystals=120", "model.n_conv=1", "trainer.batch_size=16", "seed=3"]
QUIET_CPU = ["trainer.device=cpu", "trainer.progress_bar=false"]
REFERENCE = SHARED_DATASETS / "cgcnn_pretrained" / "formation-energy-per-atom.pth.tar"
ATOM_INIT = SHARED_DATASETS / "cgcnn_sample" / "sample-regression" / "atom_init.json"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(best.pt of a one-epoch demo run, the graph cache it built), shared by this module's trainings."""
    folder = tmp_path_factory.mktemp("pretrained")
    train(compose_config("train", [*SMALL, *QUIET_CPU, f"data.cache_dir={folder / 'cache'}", "trainer.max_epochs=1"]), folder / "run")
    return folder / "run" / "checkpoints" / "best.pt", folder / "cache"


def _variant(source: Path, target: Path, **changes) -> Path:
    """A copy of checkpoint `source` at `target` with some of its entries replaced."""
    save_checkpoint(target, **{**load_checkpoint(source), **changes})
    return target


def test_a_fine_tuning_run_starts_from_the_checkpoint_weights_with_its_own_normalisation(pretrained, tmp_path, caplog):
    best, cache = pretrained
    # a normalisation no training split of the demo data gives: the tuned run must fit its own
    started = _variant(best, tmp_path / "started.pt", normalizer={"mean": 100.0, "std": 50.0, "minimum": None})

    # With a zero learning rate the weights stay where they start: the pretrained run's, not seed 3's fresh ones.
    frozen = [*SMALL, *QUIET_CPU, f"data.cache_dir={cache}", "trainer.max_epochs=1", "optim.lr=0.0"]
    with caplog.at_level(logging.INFO, logger="crystal_train.training.initial_weights"):
        train(compose_config("train", [*frozen, f"trainer.init_from={started}"]), tmp_path / "tuned")
    train(compose_config("train", frozen), tmp_path / "fresh")

    tuned, fresh = (load_checkpoint(tmp_path / name / "checkpoints" / "best.pt") for name in ("tuned", "fresh"))
    weights = _parameters(load_checkpoint(best))
    assert weights.keys() == _parameters(tuned).keys()
    assert all(torch.equal(weights[name], _parameters(tuned)[name]) for name in weights)
    assert not all(torch.equal(weights[name], _parameters(fresh)[name]) for name in weights)
    assert tuned["normalizer"] == fresh["normalizer"] != {"mean": 100.0, "std": 50.0, "minimum": None}
    assert f"Starting from the weights of {started}" in caplog.text
    assert OmegaConf.load(tmp_path / "tuned" / "config.yaml").trainer.init_from == str(started)


def test_a_fine_tuning_run_keeps_the_checkpoints_element_table_and_resumes_without_its_file(pretrained, tmp_path):
    best, cache = pretrained
    state = load_checkpoint(best)["model_state"]
    table = state["atom_features"].clone()
    table[78] = 0.0  # platinum, an element of the demo data, as an imported atom_init.json may lack one
    no_platinum = _variant(best, tmp_path / "no_platinum.pt", model_state={**state, "atom_features": table})

    settings = [*SMALL, *QUIET_CPU, f"data.cache_dir={cache}", f"trainer.init_from={no_platinum}"]
    train(compose_config("train", [*settings, "trainer.max_epochs=1"]), tmp_path / "run")
    with open(tmp_path / "run" / "skipped.csv", newline="") as handle:
        reasons = [row["reason"] for row in csv.DictReader(handle)]
    assert reasons and set(reasons) == {"element outside the feature table: Pt"}
    assert not load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model_state"]["atom_features"][78].any()

    # a resume reads last.pt only: its element table keeps the same crystals (else the changed data would be refused)
    no_platinum.unlink()
    train(compose_config("train", [*settings, "trainer.max_epochs=2"]), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


def test_frozen_layers_keep_their_starting_weights_and_batch_statistics_while_the_head_trains(pretrained, tmp_path, caplog):
    best, cache = pretrained
    settings = [*SMALL, *QUIET_CPU, f"data.cache_dir={cache}", f"trainer.init_from={best}", "trainer.freeze=[embedding,convs]"]
    with caplog.at_level(logging.INFO, logger="crystal_train.training.freezing"):
        train(compose_config("train", [*settings, "trainer.max_epochs=2"]), tmp_path / "run")
    start = load_checkpoint(best)["model_state"]
    weights = _parameters(load_checkpoint(best))
    frozen_count = sum(tensor.numel() for name, tensor in weights.items() if name.startswith(("embedding.", "convs.")))
    total = sum(tensor.numel() for tensor in weights.values())
    assert f"Frozen layers convs, embedding: {frozen_count} of {total} parameters keep their starting values" in caplog.text
    tuned = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    frozen = [name for name in start if name.startswith(("embedding.", "convs."))]
    assert any("running_mean" in name for name in frozen)  # the convolutions' BatchNorm statistics are among them
    assert all(torch.equal(start[name], tuned["model_state"][name]) for name in frozen)
    head = [name for name in start if name.startswith(("conv_to_fc.", "fc_out."))]
    assert head and not any(torch.equal(start[name], tuned["model_state"][name]) for name in head)
    # the optimizer holds the head's parameters only, so weight decay cannot move the frozen ones either
    assert sum(len(group["params"]) for group in tuned["optimizer_state"]["param_groups"]) == len(head)

    # resuming with other frozen layers would mix two trainings in one optimizer state
    with pytest.raises(ResumeConfigError, match=r"trainer\.freeze: \['convs', 'embedding'\] -> \['convs'\]"):
        train(compose_config("train", [*settings, "trainer.max_epochs=3", "trainer.freeze=[convs]"]), tmp_path / "run")
    # the same layers named in another order, or twice, are the same setting
    train(compose_config("train", [*settings, "trainer.max_epochs=3", "trainer.freeze=[convs,embedding,convs]"]), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 3


def test_freezing_an_unknown_layer_or_every_layer_is_refused_before_the_data_are_read(compose_train_cfg, tmp_path, caplog):
    for model, unknown, listed in (
        (SMALL, "conv", "CGCNN has no layer 'conv' with weights; its layers are embedding, convs, conv_to_fc, fc_out (or their parts, such as convs.0)"),
        (["data=demo", "model=schnet"], "convs", "SchNet has no layer 'convs' with weights; its layers are embedding, interactions, lin1, lin2 (or their parts, such as interactions.0)"),
    ):
        cfg = compose_train_cfg([*model, f"trainer.freeze=[{unknown}]"], tmp_path)
        with pytest.raises(ValueError, match=rf"^trainer\.freeze: {re.escape(listed)}$"):
            train(cfg, tmp_path / unknown)
        assert not (tmp_path / "cache").exists()
    everything = compose_train_cfg([*SMALL, "trainer.freeze=[embedding,convs,conv_to_fc,fc_out]"], tmp_path)
    with pytest.raises(ValueError, match="freezes every weight of CGCNN: leave at least one layer to train"):
        train(everything, tmp_path / "everything")

    # one layer may be named without brackets; without init_from its weights are random, which a warning says
    model = starting_model(compose_train_cfg([*SMALL, "trainer.freeze=convs.0"], tmp_path))
    with caplog.at_level(logging.WARNING, logger="crystal_train.training.freezing"):
        frozen = freeze_layers(model, compose_train_cfg([*SMALL, "trainer.freeze=convs.0"], tmp_path).trainer)
    assert frozen == [model.convs[0]] and "keep their random starting weights" in caplog.text
    assert {name for name, parameter in model.named_parameters() if not parameter.requires_grad} == {
        f"convs.0.{name}" for name, _ in model.convs[0].named_parameters()
    }


def test_a_run_trained_before_trainer_freeze_existed_resumes(compose_train_cfg, tmp_path):
    current = OmegaConf.to_container(compose_train_cfg(SMALL, tmp_path), resolve=True)
    before = OmegaConf.to_container(compose_train_cfg(SMALL, tmp_path), resolve=True)
    del before["trainer"]["freeze"]
    check_same_training(before, current, tmp_path / "last.pt")
    frozen = OmegaConf.to_container(compose_train_cfg([*SMALL, "trainer.freeze=[convs]"], tmp_path), resolve=True)
    with pytest.raises(ResumeConfigError, match=r"trainer\.freeze: \(absent\) -> \['convs'\]"):
        check_same_training(before, frozen, tmp_path / "last.pt")


def _parameters(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The trained parameters in a checkpoint's model_state (not the BatchNorm running statistics or the element table)."""
    return {
        name: tensor for name, tensor in checkpoint["model_state"].items()
        if "running_" not in name and "num_batches" not in name and name != "atom_features"
    }


def _checkpoint_of(compose_train_cfg, tmp_path, *overrides: str) -> dict:
    """A checkpoint dict as a run with these overrides saves it (untrained weights)."""
    cfg = compose_train_cfg(list(overrides), tmp_path)
    return {"config": OmegaConf.to_container(cfg, resolve=True), "model_state": starting_model(cfg).state_dict()}


def test_other_model_or_graph_settings_are_refused_with_the_overrides_that_match(compose_train_cfg, tmp_path):
    saved = _checkpoint_of(compose_train_cfg, tmp_path, *SMALL, "model.h_fea_len=32", "graph.max_neighbors=16")
    here = compose_train_cfg([*SMALL, "graph.cutoff=6.0"], tmp_path)
    with pytest.raises(ValueError) as refused:
        check_same_architecture(saved, here, Path("pre.pt"))
    message = str(refused.value)
    assert message.startswith("trainer.init_from=pre.pt was trained with other model or graph settings")
    assert "model.h_fea_len: 32 there, 128 here" in message and "graph.max_neighbors: 16 there, 12 here" in message
    # gaussian_dmax follows graph.cutoff, so both are named, and the overrides given make the settings match
    assert message.endswith("add graph.cutoff=8.0 graph.max_neighbors=16 model.gaussian_dmax=8.0 model.h_fea_len=32")
    matched = compose_train_cfg([*SMALL, "graph.cutoff=8.0", "graph.max_neighbors=16", "model.gaussian_dmax=8.0", "model.h_fea_len=32"], tmp_path)
    check_same_architecture(saved, matched, Path("pre.pt"))


def test_another_model_class_is_refused_naming_the_model_option_and_its_overrides(compose_train_cfg, tmp_path):
    cgcnn = compose_train_cfg(["data=demo"], tmp_path)
    saved = _checkpoint_of(compose_train_cfg, tmp_path, "data=demo", "model=schnet")
    with pytest.raises(ValueError, match=r"model\._target_: crystal_train\.models\.schnet\.SchNet there.*: choose model=schnet$"):
        check_same_architecture(saved, cgcnn, Path("pre.pt"))

    saved = _checkpoint_of(compose_train_cfg, tmp_path, "data=demo", "model=schnet", "model.num_interactions=4", "graph.max_neighbors=32")
    advice = "choose model=schnet and add graph.max_neighbors=32 model.num_interactions=4"
    with pytest.raises(ValueError, match=rf"{advice}$"):
        check_same_architecture(saved, cgcnn, Path("pre.pt"))
    check_same_architecture(saved, compose_train_cfg(["data=demo", *advice.removeprefix("choose ").replace(" and add", "").split()], tmp_path), Path("pre.pt"))


def test_a_missing_or_unconverted_init_checkpoint_is_named_with_the_setting(compose_train_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer.init_from: checkpoint not found: .*nowhere.pt"):
        starting_model(compose_train_cfg([*SMALL, f"trainer.init_from={tmp_path / 'nowhere.pt'}"], tmp_path))
    (tmp_path / "model_best.pth.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is an original CGCNN checkpoint: convert it first \(python scripts/convert_cgcnn_checkpoint.py"):
        starting_model(compose_train_cfg([*SMALL, f"trainer.init_from={tmp_path / 'model_best.pth.tar'}"], tmp_path))
    (tmp_path / "renamed.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as refused:
        starting_model(compose_train_cfg([*SMALL, f"trainer.init_from={tmp_path / 'renamed.pt'}"], tmp_path))
    assert "renamed.pt is not a crystal-train checkpoint" in str(refused.value) and "atom_init=" not in str(refused.value)
    assert "an original CGCNN checkpoint needs converting first (python scripts/convert_cgcnn_checkpoint.py" in str(refused.value)


def test_a_resumed_fine_tuning_may_not_start_from_other_weights(compose_train_cfg, tmp_path):
    def resolved(*overrides):
        return OmegaConf.to_container(compose_train_cfg([*SMALL, *overrides], tmp_path), resolve=True)

    check_same_training(resolved("trainer.init_from=a.pt"), resolved("trainer.init_from=a.pt"), tmp_path / "last.pt")
    with pytest.raises(ResumeConfigError, match=r"trainer\.init_from: 'a\.pt' -> 'b\.pt'"):
        check_same_training(resolved("trainer.init_from=a.pt"), resolved("trainer.init_from=b.pt"), tmp_path / "last.pt")
    # the same file named otherwise (absolute now, relative to where the run was launched then) is no change
    (tmp_path / "a.pt").write_bytes(b"weights")
    check_same_training(resolved("trainer.init_from=a.pt"), resolved(f"trainer.init_from={tmp_path / 'a.pt'}"), tmp_path / "last.pt", str(tmp_path))
    # a run trained before the setting existed resumes without it
    before = resolved()
    del before["trainer"]["init_from"]
    check_same_training(before, resolved(), tmp_path / "last.pt")


@pytest.mark.skipif(not (REFERENCE.is_file() and ATOM_INIT.is_file()), reason=f"{SHARED_DATASETS} lacks the CGCNN pretrained checkpoints")
def test_the_published_cgcnn_model_converted_is_a_starting_point_once_its_sizes_are_set(compose_train_cfg, tmp_path):
    converted = tmp_path / "formation.pt"
    save_checkpoint(converted, **convert_reference_checkpoint(REFERENCE, ATOM_INIT))
    with pytest.raises(ValueError, match=r"add model\.h_fea_len=32 model\.n_conv=4$"):
        starting_model(compose_train_cfg(["data=demo", f"trainer.init_from={converted}"], tmp_path))

    model = starting_model(compose_train_cfg(["data=demo", f"trainer.init_from={converted}", "model.h_fea_len=32", "model.n_conv=4"], tmp_path))
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in load_checkpoint(converted)["model_state"].items())
