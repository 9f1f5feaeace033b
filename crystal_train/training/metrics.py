"""Regression and classification metrics, and the regression target's normaliser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The log loss counts a probability closer than this to 0 or 1 as this: at most -ln(1e-15) = 34.5 per crystal, finite
# where a confident logit rounds the probability to exactly 0 or 1.
PROBABILITY_CLIP = 1e-15

# How reports name each metric of metrics.json.
METRIC_LABELS = {
    "mae": "MAE", "rmse": "RMSE", "r2": "R2",
    "accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1", "roc_auc": "ROC AUC", "log_loss": "log loss",
}


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict:
    """MAE, its standard error, RMSE, R² and n, in the target's units.

    The MAE's standard error (the sample standard deviation of the absolute errors over √n; None for fewer than two
    crystals) is how far the MAE of another draw of as many crystals from the same population would typically lie: the
    test split's sampling noise, to weigh a difference between two models' scores against. It leaves out the training's
    own randomness, which seeds measure."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    errors = predictions - targets
    n = int(targets.size)
    if n == 0:
        return {"mae": None, "mae_stderr": None, "rmse": None, "r2": None, "n": 0}
    variance = float(np.sum((targets - targets.mean()) ** 2))
    absolute = np.abs(errors)
    return {
        "mae": float(np.mean(absolute)),
        "mae_stderr": float(np.std(absolute, ddof=1) / np.sqrt(n)) if n > 1 else None,
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "r2": float(1.0 - np.sum(errors**2) / variance) if np.ptp(targets) > 0 else None,  # undefined for one target value
        "n": n,
    }


def plus_standard_error(scores: dict) -> str:
    """' ± <standard error>' to write after a split's MAE, or '' where it has none (one crystal, an older metrics.json)."""
    stderr = scores.get("mae_stderr")
    return "" if stderr is None else f" ± {stderr:.2g}"


def spread_quality(targets: np.ndarray, predictions: np.ndarray, spread: np.ndarray) -> dict:
    """How well an ensemble's member spread tracks its errors: the mean spread, the Spearman rank correlation of each
    crystal's absolute error with its spread (None for fewer than two crystals, or a constant), and the fractions of
    errors within one and two spreads (0.68 and 0.95 if the spread were a Gaussian error's standard deviation; an
    ensemble of a few members is usually overconfident). All None for no crystals or a prediction that is not finite."""
    import pandas as pd

    errors = np.abs(np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64))
    spread = np.asarray(spread, dtype=np.float64)
    if errors.size == 0 or not (np.isfinite(errors).all() and np.isfinite(spread).all()):
        return dict.fromkeys(("mean_spread", "spearman_error_spread", "within_1_spread", "within_2_spread"))
    ranks = [pd.Series(values).rank().to_numpy() for values in (errors, spread)]  # ties share their mean rank
    constant = any(np.ptp(rank) == 0 for rank in ranks)  # also a single crystal
    return {
        "mean_spread": float(spread.mean()),
        "spearman_error_spread": None if constant else float(np.corrcoef(*ranks)[0, 1]),
        "within_1_spread": float(np.mean(errors <= spread)),
        "within_2_spread": float(np.mean(errors <= 2 * spread)),
    }


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, precision, recall and F1 of class 1 at probability 0.5, ROC AUC, log loss and n."""
    from sklearn import metrics as sk  # here: importing scikit-learn takes a second that the command-line start should not

    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = int(labels.size)
    if n == 0:
        return {name: None for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")} | {"n": 0}
    predicted = probabilities >= 0.5
    both_classes = 0 < labels.sum() < n
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "precision": float(sk.precision_score(labels, predicted, zero_division=0)),
        "recall": float(sk.recall_score(labels, predicted, zero_division=0)),
        "f1": float(sk.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(sk.roc_auc_score(labels, probabilities)) if both_classes else None,  # undefined for one class
        "log_loss": float(np.mean(log_losses(labels, probabilities))),
        "n": n,
    }


def log_losses(labels, probabilities):
    """Each crystal's binary cross-entropy, -ln of the probability given to its label (clipped by PROBABILITY_CLIP), for
    NumPy arrays or tensors alike."""
    clipped = probabilities.clip(PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return -(labels * _log(clipped) + (1.0 - labels) * _log(1.0 - clipped))


def _log(values):
    return values.log() if hasattr(values, "log") else np.log(values)


@dataclass
class Normalizer:
    """Standardises targets with the mean and standard deviation of the training split.

    `minimum` (data.target_min) is the target's physical lower bound, a band gap's 0 eV:
    predictions are floored at it, so none is ever below what the target can be.
    """

    mean: float
    std: float
    minimum: float | None = None

    task = "regression"
    score = "mae"  # what early stopping and model selection minimise (history's train_mae and val_mae)
    score_label = "MAE"

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

    def train_errors(self, outputs, normalized_targets):
        """Absolute errors in the target's units, of outputs against normalised targets (not floored)."""
        return (outputs - normalized_targets).abs() * self.std

    def validation_errors(self, outputs, targets):
        """Absolute errors of the (floored) predictions in the target's units."""
        return (self.denormalize(outputs) - targets).abs()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict:
        return regression_metrics(targets, predictions)

    def baseline(self, test_targets: np.ndarray) -> dict:
        """The test MAE of predicting the training split's mean for every crystal."""
        return {"baseline_test_mae": float(np.mean(np.abs(np.asarray(test_targets) - self.mean)))}

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std, "minimum": self.minimum}
