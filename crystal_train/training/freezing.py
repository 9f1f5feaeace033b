"""trainer.freeze: layers of a model that keep their starting weights and batch statistics while the rest trains."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from crystal_train.training.config_checks import freeze_names

log = logging.getLogger(__name__)


def freeze_layers(model: torch.nn.Module, trainer_cfg: DictConfig) -> list[torch.nn.Module]:
    """Stop the gradients of trainer.freeze's layers (names as model.named_modules gives them: `convs`, `convs.0`)
    and return those layers, which the Trainer keeps in eval mode. Errors name an unknown layer, or a list that
    would leave nothing to train."""
    names = freeze_names(trainer_cfg.get("freeze"))
    if not names:
        return []
    layers = dict(model.named_modules())
    frozen = []
    for name in names:
        layer = layers.get(name)
        if layer is None or not any(True for _ in layer.parameters()):
            raise ValueError(f"trainer.freeze: {type(model).__name__} has no layer {name!r} with weights; {_layers_named(model)}")
        layer.requires_grad_(False)
        frozen.append(layer)
    total = sum(parameter.numel() for parameter in model.parameters())
    trained = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    if trained == 0:
        raise ValueError(f"trainer.freeze={names} freezes every weight of {type(model).__name__}: leave at least one layer to train")
    if trainer_cfg.get("init_from") is None:
        log.warning("trainer.freeze without trainer.init_from: the frozen layers keep their random starting weights")
    log.info("Frozen layers %s: %d of %d parameters keep their starting values", ", ".join(names), total - trained, total)
    return frozen


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer should update: those trainer.freeze left trainable."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _layers_named(model: torch.nn.Module) -> str:
    """The model's top-level layers with weights, and the first part of one as an example of a dotted name."""
    weighted = [name for name, layer in model.named_modules() if name and any(True for _ in layer.parameters())]
    top = ", ".join(name for name in weighted if "." not in name)
    part = next((name for name in weighted if "." in name), None)
    return f"its layers are {top}" + (f" (or their parts, such as {part})" if part else "")
