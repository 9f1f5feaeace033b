"""The learning-rate scaling rules for large batches."""

import math

import pytest
import torch

from crystal_train.training.lr_scaling import lr_scale, scale_learning_rate


@pytest.mark.parametrize(
    "rule, expected",
    [("none", 1.0), ("linear", 8.0), ("sqrt", math.sqrt(8.0))],
)
def test_lr_scale_rules_at_eight_times_the_reference_batch(rule, expected):
    assert lr_scale(rule, 512, 64) == pytest.approx(expected, rel=1e-12)


def test_lr_scale_is_one_at_the_reference_batch_and_shrinks_below_it():
    assert lr_scale("linear", 64, 64) == 1.0
    assert lr_scale("sqrt", 16, 64) == pytest.approx(0.5)


def test_lr_scale_names_the_bad_rule_and_the_bad_batch():
    with pytest.raises(ValueError, match="'cubic'"):
        lr_scale("cubic", 128, 64)
    with pytest.raises(ValueError, match="reference 0"):
        lr_scale("linear", 128, 0)


def test_scale_learning_rate_multiplies_every_group():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 2e-3}])
    scale_learning_rate(optimizer, 4.0)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([4e-3, 8e-3])
