"""Every packaged config composes, and the pieces a run instantiates from them are real."""

from __future__ import annotations

import hydra
import pytest
import torch

from config_utils import EXPERIMENTS, compose_config


@pytest.mark.parametrize("model", ["cgcnn", "schnet"])
@pytest.mark.parametrize("data,target", [("mp_formation", "formation_energy_per_atom"), ("mp_gap", "band_gap"), ("demo", "formation_energy_per_atom")])
def test_model_and_data_compose_and_instantiate(model, data, target):
    cfg = compose_config("train", [f"model={model}", f"data={data}"])
    assert cfg.data.target == target
    network = hydra.utils.instantiate(cfg.model)
    optimizer = hydra.utils.instantiate(cfg.optim)(network.parameters())
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert cfg.model.get("cutoff", cfg.model.get("gaussian_dmax")) == cfg.graph.cutoff


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_overlays_compose(experiment):
    cfg = compose_config("train", [f"experiment={experiment}"])
    hydra.utils.instantiate(cfg.model)
    assert cfg.trainer.max_epochs > 0 and cfg.trainer.patience > 0
    if experiment.startswith("mp2018"):
        assert cfg.data.snapshot.endswith("mp2018_megnet_with_structures.csv.xz")
        assert cfg.data.target == ("band_gap" if "_gap" in experiment else "formation_energy_per_atom")
        assert cfg.model._target_.endswith("SchNet" if "schnet" in experiment else "CGCNN")


def test_experiments_exist_for_both_models_and_targets():
    assert {f"mp2018_{m}_{t}" for m in ("cgcnn", "schnet") for t in ("formation", "gap")} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name,required", [("eval", "ckpt"), ("predict", "input")])
def test_eval_and_predict_configs_compose(name, required):
    cfg = compose_config(name, [f"{required}=x", "ckpt=x"])
    assert cfg[required] == "x" and cfg.device == "auto"
