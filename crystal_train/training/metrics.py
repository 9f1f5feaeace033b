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
        "r2": float(1.0 - np.sum(errors**2) / variance) if variance > 0 else None,
        "n": n,
    }


@dataclass
class Normalizer:
    """Standardises targets with the mean and standard deviation of the training split."""

    mean: float
    std: float

    @classmethod
    def fit(cls, train_targets: np.ndarray) -> "Normalizer":
        values = np.asarray(train_targets, dtype=np.float64)
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError("the training split needs at least one finite target to fit the normaliser")
        std = float(values.std())
        return cls(mean=float(values.mean()), std=std if std > 1e-12 else 1.0)

    def normalize(self, values):
        return (values - self.mean) / self.std

    def denormalize(self, values):
        return values * self.std + self.mean

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}
