"""What keeps a step cheap on a GPU, checked on the CPU: no host-device syncs, no recompiles.

On a GPU, reading a value back (`.item()`, `float(t)`) or an op whose output shape depends on
the data (`nonzero`, boolean masks, `unique`, `repeat_interleave` without `output_size`) stalls
the host until the queued kernels finish. Without a GPU, these ops are recorded on the CPU as they
are dispatched: an epoch of many batches must make no more of them than an epoch of a few,
so the only ones left are the once-per-epoch reductions. And with `trainer.compile=true`, batches
of every size must run through the graphs compiled first, with no graph breaks.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from graph_utils import make_trainer, random_crystals
from crystal_train.data.graphs import GraphSettings
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.store import build_store
from crystal_train.training.inference import predict
from crystal_train.training.loop import Trainer

#: Ops that make a CUDA host wait for the device (value reads and data-dependent output shapes).
SYNCING_OPS = {
    "_local_scalar_dense", "nonzero", "masked_select", "masked_scatter", "is_nonzero", "equal",
    "_unique2", "unique_dim", "unique_consecutive",
}


class SyncRecorder(TorchDispatchMode):
    """Counts the syncing ops dispatched, leaving out value reads of the given host-side tensors."""

    def __init__(self, host_tensors=lambda: []):
        super().__init__()
        self.host_tensors = host_tensors  # called at each op: optimizer state appears during the first step
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS and not any(args[0] is t for t in self.host_tensors()):
            self.counts[name] += 1
        if name == "repeat_interleave" and func._overloadname != "self_int" and kwargs.get("output_size") is None:
            self.counts["repeat_interleave without output_size"] += 1
        if name == "index" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.counts["boolean-mask index"] += 1
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def graphs() -> DeviceGraphs:
    store = build_store(random_crystals(32), lambda c: c, GraphSettings(5.0, 12), num_workers=1, progress=False)
    return DeviceGraphs(store, "cpu", distinct_distances=True)  # SchNet's faster path; CGCNN ignores them


def _optimizer_step_counters(trainer: Trainer):
    """Adam's per-parameter step counts: host tensors on a GPU too, so reading them does not sync."""
    return lambda: [state["step"] for state in trainer.optimizer.state.values() if "step" in state]


def _syncs_per_phase(trainer: Trainer) -> dict[str, Counter]:
    """Syncing ops of one training epoch, one validation pass and one prediction pass over the same crystals."""
    phases = {}
    with SyncRecorder(_optimizer_step_counters(trainer)) as recorder:
        trainer._train_epoch()
    phases["training epoch"] = recorder.counts
    with SyncRecorder() as recorder:
        trainer._validate()
    phases["validation"] = recorder.counts
    batches = trainer.val_batches
    with SyncRecorder() as recorder:
        predict(trainer.model, batches.graphs, batches.indices, trainer.normalizer, batches.batch_size, trainer.precision)
    phases["prediction"] = recorder.counts
    return phases


@pytest.mark.parametrize("model_name", ["cgcnn", "schnet"])
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_syncs_do_not_grow_with_the_number_of_batches(graphs, model_name, precision, tmp_path):
    few = _syncs_per_phase(make_trainer(graphs, model_name, 8, tmp_path, precision=precision))
    many = _syncs_per_phase(make_trainer(graphs, model_name, 32, tmp_path, precision=precision))
    for phase in many:
        assert few[phase] == many[phase], f"{phase} of 2 vs 8 batches: {few[phase]} vs {many[phase]}"
        assert set(many[phase]) <= {"_local_scalar_dense"}, phase


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cgcnn", "schnet"])
def test_compiled_model_takes_every_batch_size_without_recompiling(graphs, model_name, tmp_path):
    """One graph for training and one for evaluation (train() and eval() modes compile apart), whatever the batch shapes."""
    torch._dynamo.reset()
    counters.clear()
    trainer = make_trainer(graphs, model_name, 30, tmp_path, "trainer.compile=true")  # batches of 4 and a last one of 2
    for _epoch in range(2):
        train_loss, _ = trainer._train_epoch()
        trainer._validate()
    assert math.isfinite(train_loss)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_recorder_sees_a_value_read_and_a_boolean_mask():
    """The recorder itself: a per-batch `.item()`, mask or unsized repeat_interleave would be caught."""
    values = torch.arange(6.0)
    with SyncRecorder() as recorder:
        values.sum().item()
        values[values > 2.0]
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
    assert recorder.counts == Counter({"_local_scalar_dense": 1, "boolean-mask index": 1, "repeat_interleave without output_size": 1})
