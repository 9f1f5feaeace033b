"""trainer.init_from: a training that starts from another checkpoint's weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHARED_DATASETS
from crystal_train.models.cgcnn_import import convert_reference_checkpoint
from crystal_train.training.checkpoint import load_checkpoint, save_checkpoint
from crystal_train.training.initial_weights import check_same_architecture, starting_model
from crystal_train.training.resume import ResumeConfigError, check_same_training
from crystal_train.training.run import train

SMALL = ["data=demo", "data.num_crystals=120", "model.n_conv=1", "trainer.batch_size=16", "seed=3"]
REFERENCE = SHARED_DATASETS / "cgcnn_pretrained" / "formation-energy-per-atom.pth.tar"
ATOM_INIT = SHARED_DATASETS / "cgcnn_sample" / "sample-regression" / "atom_init.json"


def _parameters(checkpoint_path: Path) -> dict[str, torch.Tensor]:
    """The trained parameters in a checkpoint's model_state (not the BatchNorm running statistics or the element table)."""
    state = load_checkpoint(checkpoint_path)["model_state"]
    return {name: tensor for name, tensor in state.items() if "running_" not in name and "num_batches" not in name and name != "atom_features"}


def test_a_fine_tuning_run_starts_from_the_checkpoint_weights(compose_train_cfg, tmp_path, caplog):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    train(compose_train_cfg([*SMALL, cache, "trainer.max_epochs=1"], tmp_path), tmp_path / "pretrained")
    pretrained = tmp_path / "pretrained" / "checkpoints" / "best.pt"

    # With a zero learning rate the weights stay where they start: the pretrained run's, not seed 3's fresh ones.
    frozen = ["trainer.max_epochs=1", "optim.lr=0.0"]
    with caplog.at_level(logging.INFO, logger="crystal_train.training.initial_weights"):
        train(compose_train_cfg([*SMALL, cache, *frozen, f"trainer.init_from={pretrained}"], tmp_path), tmp_path / "tuned")
    train(compose_train_cfg([*SMALL, cache, *frozen], tmp_path), tmp_path / "fresh")

    started = _parameters(pretrained)
    tuned, fresh = (_parameters(tmp_path / name / "checkpoints" / "best.pt") for name in ("tuned", "fresh"))
    assert started.keys() == tuned.keys()
    assert all(torch.equal(started[name], tuned[name]) for name in started)
    assert not all(torch.equal(started[name], fresh[name]) for name in started)
    assert f"Starting from the weights of {pretrained}" in caplog.text
    assert OmegaConf.load(tmp_path / "tuned" / "config.yaml").trainer.init_from == str(pretrained)


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


def test_another_model_class_is_refused_naming_the_model_option(compose_train_cfg, tmp_path):
    saved = _checkpoint_of(compose_train_cfg, tmp_path, "data=demo", "model=schnet")
    with pytest.raises(ValueError, match=r"model\._target_: crystal_train\.models\.schnet\.SchNet there.*choose model=schnet with its settings$"):
        check_same_architecture(saved, compose_train_cfg(["data=demo"], tmp_path), Path("pre.pt"))


def test_a_missing_or_unconverted_init_checkpoint_is_named_with_the_setting(compose_train_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer.init_from: checkpoint not found: .*nowhere.pt"):
        starting_model(compose_train_cfg([*SMALL, f"trainer.init_from={tmp_path / 'nowhere.pt'}"], tmp_path))
    (tmp_path / "model_best.pth.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is an original CGCNN checkpoint: convert it first \(python scripts/convert_cgcnn_checkpoint.py"):
        starting_model(compose_train_cfg([*SMALL, f"trainer.init_from={tmp_path / 'model_best.pth.tar'}"], tmp_path))


def test_a_resumed_fine_tuning_may_not_start_from_other_weights(compose_train_cfg, tmp_path):
    def resolved(*overrides):
        return OmegaConf.to_container(compose_train_cfg([*SMALL, *overrides], tmp_path), resolve=True)

    check_same_training(resolved("trainer.init_from=a.pt"), resolved("trainer.init_from=a.pt"), tmp_path / "last.pt")
    with pytest.raises(ResumeConfigError, match=r"trainer\.init_from: 'a\.pt' -> 'b\.pt'"):
        check_same_training(resolved("trainer.init_from=a.pt"), resolved("trainer.init_from=b.pt"), tmp_path / "last.pt")
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
