"""Scale the configured learning rate with the global batch size (linear or square-root rule)."""

from __future__ import annotations

import math

import torch

RULES = ("none", "linear", "sqrt")


def lr_scale(rule: str, global_batch_size: int, reference_batch_size: int) -> float:
    """The factor `optim.lr` is multiplied by when training at `global_batch_size`.

    `optim.lr` is read as the rate tuned at `reference_batch_size`; "linear" scales it by the
    batch ratio (Goyal et al., 2017), "sqrt" by its square root (the usual rule for Adam).
    """
    if rule not in RULES:
        raise ValueError(f"trainer.lr_scaling must be one of {', '.join(RULES)}, not {rule!r}")
    if global_batch_size < 1 or reference_batch_size < 1:
        raise ValueError(f"batch sizes must be positive (global {global_batch_size}, reference {reference_batch_size})")
    ratio = global_batch_size / reference_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def scale_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's learning rate by `factor` (before any scheduler is built)."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
