"""What a model's single output means (data.task): a standardised regression target, or the logit of a binary class.

Both transforms share one interface, so the training loop, evaluation and prediction have one code path:
`normalize` (targets as the loss sees them), `denormalize` (outputs as predictions), `train_errors` and
`validation_errors` (per crystal, the score early stopping and model selection use), `metrics`, `baseline`
and `state` (what a checkpoint saves; `output_transform` reads it back).
"""

from __future__ import annotations

import numpy as np
import torch

from crystal_train.training.metrics import Normalizer, classification_metrics, log_losses

TASKS = ("regression", "classification")  # data.task


class ClassProbability:
    """data.task=classification: the model's output is the logit of class 1; its predictions are the probability of
    class 1, its loss and selection score the binary cross-entropy (log loss).

    `positive_fraction` is the training split's share of class 1 (None for an imported checkpoint), whose
    majority class is the baseline a classifier must beat.
    """

    task = "classification"
    score = "log_loss"
    score_label = "log loss"

    def __init__(self, positive_fraction: float | None = None):
        self.positive_fraction = None if positive_fraction is None else float(positive_fraction)

    @classmethod
    def fit(cls, train_labels: np.ndarray, target: str = "the target") -> "ClassProbability":
        """The share of class 1 in the training split; ValueError if it holds one class only (nothing to learn)."""
        labels = np.asarray(train_labels, dtype=np.float64)
        if labels.size == 0:
            raise ValueError("the training split needs at least one labelled crystal")
        share = float(labels.mean())
        if share in (0.0, 1.0):
            raise ValueError(
                f"all {labels.size} training crystals are of class {int(share)} ({target}): a classifier needs both. "
                "Check data.target and data.positive_at_most (its units, its sign), or use more crystals (data.limit)"
            )
        return cls(share)

    def normalize(self, values):
        return values

    def denormalize(self, values):
        """The probability of class 1 for model outputs (NumPy array or tensor)."""
        if isinstance(values, torch.Tensor):
            return torch.sigmoid(values)
        return torch.sigmoid(torch.from_numpy(np.asarray(values, dtype=np.float64))).numpy()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the logits (trainer.loss is a regression setting)."""
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)

    def train_errors(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss's binary cross-entropy of each crystal, from the logits."""
        return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none")

    def validation_errors(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each crystal's log loss as metrics.json counts it: of the (clipped) probability, so that model selection and the
        reported validation log loss agree even where a confident logit rounds the probability to 0 or 1."""
        return log_losses(targets, self.denormalize(outputs))

    def metrics(self, labels: np.ndarray, probabilities: np.ndarray) -> dict:
        return classification_metrics(labels, probabilities)

    def baseline(self, test_labels: np.ndarray) -> dict:
        """The test accuracy of always predicting the training split's majority class, and the test log loss of always
        predicting its share of class 1 (none for an imported checkpoint, which records no share)."""
        if self.positive_fraction is None:
            return {}
        labels = np.asarray(test_labels, dtype=np.float64)
        majority = 1.0 if self.positive_fraction >= 0.5 else 0.0
        return {
            "baseline_test_accuracy": float(np.mean(labels == majority)),
            "baseline_test_log_loss": float(np.mean(log_losses(labels, np.full(labels.shape, self.positive_fraction)))),
        }

    def state(self) -> dict:
        return {"task": self.task, "positive_fraction": self.positive_fraction}


def output_transform(state: dict) -> Normalizer | ClassProbability:
    """The transform a checkpoint's saved `normalizer` state describes."""
    state = dict(state)
    if state.pop("task", "regression") == "classification":
        return ClassProbability(**state)
    return Normalizer(**state)


def fit_output_transform(
    task: str, train_targets: np.ndarray, minimum: float | None = None, target: str = "the target"
) -> Normalizer | ClassProbability:
    """The transform for data.task, fitted on the training split's targets only (`target` names them in errors)."""
    if task == "classification":
        return ClassProbability.fit(train_targets, target)
    return Normalizer.fit(train_targets, minimum=minimum)
