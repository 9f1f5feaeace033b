"""Where a training's weights start: fresh, from trainer.init_from's checkpoint (fine-tuning), or from last.pt (resuming)."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from crystal_train.training.checkpoint import element_table, load_checkpoint, warn_if_other_graphs
from crystal_train.training.resume import ABSENT, setting_changes

log = logging.getLogger(__name__)

# The blocks of a config that decide what the weights mean: the layers, and the graphs they read.
ARCHITECTURE = ("model", "graph")


def starting_model(cfg: DictConfig, resumed: dict | None = None) -> torch.nn.Module:
    """The configured model, with trainer.init_from's weights when set; with `resumed` (last.pt) its element table
    only, since Trainer.restore loads its weights with the optimizer's state."""
    if resumed is not None:
        return hydra.utils.instantiate(cfg.model, **element_table(resumed))
    init_from = cfg.trainer.get("init_from")
    if init_from is None:
        return hydra.utils.instantiate(cfg.model)
    path = Path(str(init_from)).expanduser()
    checkpoint = _init_checkpoint(path)
    check_same_architecture(checkpoint, cfg, path)
    warn_if_other_graphs(checkpoint, path)
    model = hydra.utils.instantiate(cfg.model, **element_table(checkpoint))
    model.load_state_dict(checkpoint["model_state"])
    units = f" ({checkpoint['units']})" if checkpoint.get("units") else ""
    log.info(
        "Starting from the weights of %s (trained on %s%s); the optimizer, the learning-rate schedule and the target "
        "normalisation (or a classifier's class share) start afresh", path.resolve(), checkpoint.get("target", "an unrecorded target"), units,
    )
    return model


def _init_checkpoint(path: Path) -> dict:
    """trainer.init_from's checkpoint; errors name the setting, and an original CGCNN one the conversion it needs."""
    original = path.name.endswith(".pth.tar")
    output = f"{path.name.removesuffix('.pth.tar')}.pt" if original else "converted.pt"
    convert = f"python scripts/convert_cgcnn_checkpoint.py {path} --atom-init atom_init.json --output {output}"
    if original:
        raise ValueError(f"trainer.init_from={path} is an original CGCNN checkpoint: convert it first ({convert})")
    try:
        return load_checkpoint(path, original_cgcnn_hint=f"an original CGCNN checkpoint needs converting first ({convert})")
    except (FileNotFoundError, IsADirectoryError, ValueError) as error:
        raise type(error)(f"trainer.init_from: {error}") from None


def check_same_architecture(checkpoint: dict, cfg: DictConfig, path: Path) -> None:
    """Raise ValueError naming each model or graph setting of this run that differs from the checkpoint's, with the
    overrides that match it: its weights only mean something in the model, and on the graphs, they were trained in."""
    configs = (checkpoint["config"], OmegaConf.to_container(cfg, resolve=True))
    saved, current = ({block: config.get(block, {}) for block in ARCHITECTURE} for config in configs)
    changes = setting_changes(saved, current)
    if not changes:
        return
    listed = "; ".join(f"{key}: {_shown(old)} there, {_shown(new)} here" for key, (old, new) in changes.items())
    old_target = changes.get("model._target_", (None,))[0]
    if old_target is None:
        advice = "add " + _overrides(changes)
    elif (option := _model_option(old_target)) is None:
        advice = f"build its model ({old_target})"
    else:
        name, defaults = option
        rest = _overrides(setting_changes(saved, defaults))
        advice = f"choose model={name}" + (f" and add {rest}" if rest else "")
    raise ValueError(
        f"trainer.init_from={path} was trained with other model or graph settings ({listed}); its weights only fit the "
        f"model and graphs they were trained in: {advice}"
    )


def _model_option(target: str) -> tuple[str, dict] | None:
    """(name, resolved model and graph blocks) of the packaged model= option that builds `target`, if one does."""
    for file in sorted(resources.files("crystal_train.configs").joinpath("model").iterdir(), key=lambda file: file.name):
        option = OmegaConf.to_container(OmegaConf.create(file.read_text()), resolve=True) if file.name.endswith(".yaml") else {}
        if option.get("model", {}).get("_target_") == target:
            return file.name.removesuffix(".yaml"), {block: option.get(block, {}) for block in ARCHITECTURE}
    return None


def _overrides(changes: dict[str, tuple]) -> str:
    """The command-line overrides that turn each change's second value into its first."""
    return " ".join(_override(key, wanted, current) for key, (wanted, current) in changes.items())


def _override(key: str, wanted, current) -> str:
    """The command-line override that turns `current` into `wanted` (either may be ABSENT)."""
    if wanted is ABSENT:
        return f"~{key}"
    return f"{'+' if current is ABSENT else ''}{key}={_hydra_value(wanted)}"


def _hydra_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true/false, numbers and lists as Hydra reads them


def _shown(value) -> str:
    return "(absent)" if value is ABSENT else _hydra_value(value)
