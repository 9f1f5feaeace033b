"""Regression metrics and the target normaliser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict:
    """MAE, RMSE, R² and n, in the target's units."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    errors = predictions - targets
    n = int(targets.size)
    if n == 0:
        return {"mae": None, "rmse": None, "r2": None, "n": 0}
    variance = float(np.sum((targets - targets.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "r2": float(1.0 - np.sum(errors**2) / variance) if np.ptp(targets) > 0 else None,  # undefined for one target value
        "n": n,
    }


@dataclass
class Normalizer:
    """Standardises targets with the mean and standard deviation of the training split.

    `minimum` (data.target_min) is the target's physical lower bound, a band gap's 0 eV:
    predictions are floored at it, so none is ever below what the target can be.
    """

    mean: float
    std: float
    minimum: float | None = None

    @classmethod
    def fit(cls, train_targets: np.ndarray, minimum: float | None = None) -> "Normalizer":
        values = np.asarray(train_targets, dtype=np.float64)
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError("the training split needs at least one finite target to fit the normaliser")
        mean, std = float(values.mean()), float(values.std())
        if not std > 1e-12 * abs(mean):  # no spread to scale by (beyond rounding): the scale of the values, or 1
            std = abs(mean) or 1.0
        return cls(mean=mean, std=std, minimum=None if minimum is None else float(minimum))

    def normalize(self, values):
        return (values - self.mean) / self.std

    def denormalize(self, values):
        """Model outputs (NumPy array or tensor) in the target's units, floored at `minimum`."""
        values = values * self.std + self.mean
        return values if self.minimum is None else values.clip(self.minimum, None)

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std, "minimum": self.minimum}
