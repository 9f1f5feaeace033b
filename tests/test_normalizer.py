"""The target normaliser: fit on the training split, scale by its spread, whatever the targets' magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_train.training.metrics import Normalizer


@pytest.mark.parametrize("scale", [1e-13, 1.0, 1e6])
def test_the_spread_scales_the_targets_at_any_magnitude(scale):
    targets = scale * np.array([1.0, 2.0, 4.0, 7.0])
    normalizer = Normalizer.fit(targets)
    assert normalizer.std == pytest.approx(np.std(targets), rel=1e-12)
    normalised = normalizer.normalize(targets)
    assert normalised.mean() == pytest.approx(0.0, abs=1e-12) and normalised.std() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(normalizer.denormalize(normalised), targets, rtol=1e-12)


@pytest.mark.parametrize(("value", "scale"), [(3e-13, 3e-13), (-2.5, 2.5), (0.0, 1.0)])
def test_identical_targets_are_scaled_by_their_size_or_one(value, scale):
    normalizer = Normalizer.fit(np.full(5, value))
    assert (normalizer.mean, normalizer.std) == (value, scale)
    assert normalizer.denormalize(np.zeros(2)).tolist() == [value, value]


def test_a_spread_within_rounding_of_a_large_mean_counts_as_none():
    targets = np.array([1e9, 1e9 + 1e-7])  # 1e-16 relative: float64 rounding, not a spread to learn
    assert Normalizer.fit(targets).std == pytest.approx(1e9)
