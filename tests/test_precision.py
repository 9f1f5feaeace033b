"""trainer.precision: the float32 matrix-product mode holds for a whole pass, backward included, and is restored after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_utils import make_trainer, random_crystals
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.store import build_store
from crystal_train.training.inference import predict
from crystal_train.training.metrics import Normalizer


@pytest.fixture(scope="module")
def graphs():
    store = build_store(random_crystals(8), lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)
    return DeviceGraphs(store, "cpu", distinct_distances=True)  # SchNet's faster path; CGCNN ignores them


@pytest.fixture
def caller_setting():
    """A caller's own global setting, which a run must not leave changed."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    yield "medium"
    torch.set_float32_matmul_precision(previous)


def _record_modes(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(pass, float32 matmul precision) each time the model runs forward or a gradient reaches its first parameter."""
    seen = []
    model.register_forward_hook(lambda *_: seen.append(("forward", torch.get_float32_matmul_precision())))
    next(model.parameters()).register_hook(lambda grad: seen.append(("backward", torch.get_float32_matmul_precision())))
    return seen


@pytest.mark.parametrize(("precision", "mode"), [("32", "highest"), ("tf32", "high"), ("bf16", "highest")])
def test_training_and_validation_run_in_the_precisions_matmul_mode_and_restore_the_callers(graphs, caller_setting, tmp_path, precision, mode):
    trainer = make_trainer(graphs, "cgcnn", 8, tmp_path, "trainer.max_epochs=1", precision=precision)
    seen = _record_modes(trainer.model)
    trainer.fit()
    assert {"forward", "backward"} == {phase for phase, _ in seen}
    assert {setting for _, setting in seen} == {mode}
    assert torch.get_float32_matmul_precision() == caller_setting


@pytest.mark.parametrize(("precision", "mode"), [("32", "highest"), ("tf32", "high")])
def test_prediction_runs_in_the_precisions_matmul_mode_and_restores_the_callers(graphs, caller_setting, tmp_path, precision, mode):
    trainer = make_trainer(graphs, "schnet", 8, tmp_path)
    seen = _record_modes(trainer.model)
    predict(trainer.model, graphs, np.arange(8), Normalizer(0.0, 1.0), batch_size=4, precision=precision)
    assert seen and {setting for _, setting in seen} == {mode}
    assert torch.get_float32_matmul_precision() == caller_setting


def test_tf32_trains_as_float32_on_a_cpu(graphs, tmp_path):
    """CPUs have no TensorFloat-32: the same steps give the same weights as precision 32, to float32 rounding."""
    weights = {}
    for precision in ("32", "tf32"):
        trainer = make_trainer(graphs, "schnet", 8, tmp_path / precision, "trainer.max_epochs=2", precision=precision)
        trainer.fit()
        weights[precision] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert torch.allclose(weights["tf32"], weights["32"], rtol=0, atol=1e-6)
