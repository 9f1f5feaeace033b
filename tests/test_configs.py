"""Every packaged config composes, and the pieces a run instantiates from them are real."""

from __future__ import annotations

import re

import hydra
import pytest
import torch

from config_utils import EXPERIMENTS, compose_config
import crystal_train.training.run as run_module
from crystal_train.training.run import train


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
        assert cfg.data.target == ("formation_energy_per_atom" if "_formation" in experiment else "band_gap")
        assert cfg.data.task == ("classification" if "_metal" in experiment else "regression")
        assert cfg.model._target_.endswith("SchNet" if "schnet" in experiment else "CGCNN")


class ReachedTheData(Exception):
    """Raised in place of reading the data: the run got past its checks of the settings."""


@pytest.mark.slow
def test_an_overlay_with_another_model_or_scheduler_instantiates_or_is_refused_before_any_work(tmp_path, monkeypatch):
    """Choosing another model or scheduler than an overlay's leaves the overlay's own settings for it in the config:
    where the chosen class cannot take them, the run stops naming them before data are read or files written."""
    def reached_the_data(*args, **kwargs):
        raise ReachedTheData

    monkeypatch.setattr(run_module, "prepare_data", reached_the_data)
    refused = []
    for experiment in EXPERIMENTS:
        for group, option in [("scheduler", "plateau"), ("scheduler", "cosine"), ("scheduler", "step"), ("model", "cgcnn"), ("model", "schnet")]:
            cfg = compose_config("train", [f"experiment={experiment}", f"{group}={option}", f"data.cache_dir={tmp_path / 'cache'}"])
            run_dir = tmp_path / f"{experiment}-{option}"
            try:
                network = hydra.utils.instantiate(cfg.model)
                hydra.utils.instantiate(cfg.scheduler)(hydra.utils.instantiate(cfg.optim)(network.parameters()))
            except Exception as error:  # Hydra wraps the class's TypeError
                unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error)).group(1)
                with pytest.raises(ValueError, match=rf"{group} \S+ takes no [\w, ]*\b{unexpected}\b.* ~{group}\.{unexpected}\b"):
                    train(cfg, run_dir)
                assert [path.name for path in run_dir.iterdir()] == [".crystal-train.lock"]
                refused.append((experiment, option))
            else:
                with pytest.raises(ReachedTheData):
                    train(cfg, run_dir)
    # The GPU-sized overlays set ReduceLROnPlateau's factor and patience and their model's sizes; the _cpu ones neither.
    gpu_overlays = [name for name in EXPERIMENTS if name.startswith("mp2018") and not name.endswith("_cpu")]
    assert len(gpu_overlays) == 5
    assert sorted(refused) == sorted(
        (name, option) for name in gpu_overlays for option in ("cosine", "step", "schnet" if "cgcnn" in name else "cgcnn")
    )


def test_experiments_exist_for_both_models_and_targets():
    assert {f"mp2018_{m}_{t}" for m in ("cgcnn", "schnet") for t in ("formation", "gap")} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name,required", [("eval", {"ckpt"}), ("predict", {"ckpt", "input"})])
def test_eval_and_predict_configs_compose_and_mark_exactly_their_mandatory_settings(name, required):
    from omegaconf import OmegaConf

    assert set(OmegaConf.missing_keys(compose_config(name, []))) == required
    assert not OmegaConf.missing_keys(compose_config(name, [f"{key}=x" for key in required]))


def test_the_optuna_search_space_names_real_settings_and_parses_as_sweeps():
    """Checked without the optional sweeper plugin: each searched key exists in the train config, and each range
    parses as Hydra's sweep override (the log tag included), as the plugin reads it."""
    from importlib.resources import files

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    search = OmegaConf.load(files("crystal_train.configs").joinpath("hparams_search", "optuna.yaml"))
    params = search.hydra.sweeper.params
    cfg = compose_config("train", ["data=demo"])
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    assert all(override.is_sweep_override() for override in parsed)
    for override in parsed:
        assert OmegaConf.select(cfg, override.key_or_group) is not None, override.key_or_group
    lr = next(override for override in parsed if override.key_or_group == "optim.lr")
    assert lr.value().tags == {"log"} and 0 < lr.value().start < cfg.optim.lr < lr.value().end  # log-uniform, around the default
