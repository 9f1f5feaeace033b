"""An exponential moving average of a model's weights, validated and saved in place of the raw weights."""

from __future__ import annotations

import copy
import math

import torch


class WeightAverage:
    """A copy of `model` whose floating-point parameters and buffers follow it as an exponential moving average.

    Update number t (counting from 0) moves the average towards the model by 1 − min(decay, (1 + t) / (10 + t)),
    so early averages are not dominated by the initial weights. Integer buffers (BatchNorm's batch
    counter) are copied as they are. The model's tensors are paired with the copy's once, here: they
    are updated and loaded in place, so the pairs stay valid and a step builds no state dicts.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = checked_decay(decay)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.updates = 0
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._averaged = [mine for mine, _ in pairs if mine.is_floating_point()]
        self._followed = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self._copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the model's current weights."""
        step_decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        for mine, theirs in self._copied:
            mine.copy_(theirs)
        torch._foreach_lerp_(self._averaged, self._followed, 1.0 - step_decay)

    def load(self, state: dict, updates: int) -> None:
        """Restore an average saved as a model state dict after `updates` updates."""
        self.module.load_state_dict(state)
        self.updates = int(updates)


def checked_decay(decay) -> float:
    """trainer.ema_decay as a float, or a ValueError unless it lies strictly between 0 and 1."""
    try:
        value = float(decay)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(f"trainer.ema_decay must be null (off) or lie strictly between 0 and 1, such as 0.999; not {decay!r}")
    return value
