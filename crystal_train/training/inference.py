"""Predictions in the target's units for any set of crystals: shared by train, eval and predict."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from crystal_train.data.loader import BatchIterator, DeviceGraphs

PRECISIONS = ("32", "tf32", "bf16")  # trainer.precision


@torch.no_grad()
def predict(
    model: torch.nn.Module, graphs: DeviceGraphs, indices: np.ndarray, normalizer, batch_size: int, precision: str = "32"
) -> np.ndarray:
    """Model predictions (float64, through `normalizer`: a regression's Normalizer, a classification's
    ClassProbability) for the crystals at `indices`, in that order.

    The model runs in the precision training validated it in (trainer.precision).
    """
    outputs = _run(model, model, graphs, indices, batch_size, precision)
    return normalizer.denormalize(outputs.double().numpy()) if outputs is not None else np.zeros(0)


@torch.no_grad()
def crystal_features(model: torch.nn.Module, graphs: DeviceGraphs, indices: np.ndarray, batch_size: int, precision: str = "32") -> np.ndarray:
    """The feature vector the model's output head reads (`model.crystal_features`), float32 (len(indices), width), for
    the crystals at `indices`, in that order."""
    outputs = _run(model, model.crystal_features, graphs, indices, batch_size, precision)
    return outputs.numpy() if outputs is not None else np.zeros((0, 0), dtype=np.float32)


def _run(model: torch.nn.Module, forward, graphs: DeviceGraphs, indices: np.ndarray, batch_size: int, precision: str):
    """`forward` (the model, or one of its methods) in eval mode over the crystals at `indices` in batches, in the
    precision training validated it in: its outputs concatenated as a float32 CPU tensor, None for no crystals."""
    model.eval()
    device_type = graphs.device.type
    outputs = []
    with float32_matmul_precision(precision):
        for batch in BatchIterator(graphs, indices, batch_size):
            with precision_context(device_type, precision):
                outputs.append(forward(batch).float())
    return torch.cat(outputs).cpu() if outputs else None


def precision_context(device_type: str, precision: str):
    """bf16 autocast around a forward pass for `precision="bf16"`, a no-op context for "32" and "tf32" (trainer.precision)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=str(precision) == "bf16")


@contextmanager
def float32_matmul_precision(precision: str):
    """Float32 matrix products for the whole of a training or inference pass, backward included:
    TensorFloat-32 on CUDA for `precision="tf32"`, full float32 otherwise; the previous setting is restored on exit.

    CPUs have no TensorFloat-32, so there "tf32" computes as "32".
    """
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if str(precision) == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def resolve_device(name: str, setting: str = "trainer.device") -> torch.device:
    """'auto' picks CUDA when available; 'cpu' and 'cuda[:N]' are taken as given. Errors name `setting`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{setting}={name} is no device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}={name} was asked for, but no CUDA device is available; use {setting}=cpu")
    return device
