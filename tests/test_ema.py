"""The moving average of the weights: its update rule, integer buffers and restore."""

from __future__ import annotations

import pytest
import torch

from crystal_train.training.ema import WeightAverage, checked_decay


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))


def _set_weights(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(value)


def test_average_follows_the_decay_with_its_early_ramp():
    model = _model()
    _set_weights(model, 1.0)
    average = WeightAverage(model, decay=0.5)
    expected = 1.0
    for step, value in enumerate([3.0, 7.0, -2.0, 5.0]):
        _set_weights(model, value)
        average.update()
        decay = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18.., 0.25, 0.3..: all on the ramp
        expected = decay * expected + (1 - decay) * value
    weight = average.module[0].weight
    assert torch.allclose(weight, torch.full_like(weight, expected))
    assert average.module[1].running_var[0].item() == pytest.approx(expected)
    assert average.module[1].num_batches_tracked.item() == 5  # integer buffers are copied, not averaged
    assert average.updates == 4


@pytest.mark.parametrize("decay", [0.5, 0.8])
def test_after_the_ramp_the_average_moves_by_one_minus_the_decay(decay):
    model = _model()
    average = WeightAverage(model, decay=decay)
    _set_weights(model, 0.0)
    for _ in range(60):  # the ramp (1 + t) / (10 + t) passes 0.8 at t = 36
        average.update()
    before = average.module[0].weight[0, 0].item()
    _set_weights(model, 1.0)
    average.update()
    assert average.module[0].weight[0, 0].item() == pytest.approx(decay * before + (1 - decay) * 1.0)


def test_average_is_a_separate_frozen_copy():
    model = _model()
    average = WeightAverage(model, decay=0.9)
    _set_weights(model, 4.0)
    assert not torch.equal(average.module[0].weight, model[0].weight)
    assert not any(p.requires_grad for p in average.module.parameters())
    assert not average.module.training


def test_load_restores_weights_and_the_update_count():
    model = _model()
    average = WeightAverage(model, decay=0.999)
    saved = {key: torch.full_like(value, 2.0) for key, value in model.state_dict().items()}
    average.load(saved, updates=40)
    _set_weights(model, 0.0)
    average.update()  # step 40 of the ramp: decay 41 / 50
    assert average.module[0].bias[0].item() == pytest.approx(2.0 * 41 / 50)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, "fast", None])
def test_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match="trainer.ema_decay must be null"):
        checked_decay(decay)
