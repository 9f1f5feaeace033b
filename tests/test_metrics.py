"""The MAE's standard error: what it measures, and where reports show it."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_train.training.metrics import regression_metrics
from crystal_train.training.run import result_line


def test_the_mae_standard_error_measures_how_much_the_mae_of_another_test_set_varies():
    rng = np.random.default_rng(0)
    draws = [rng.standard_t(df=4, size=500) for _ in range(2000)]  # heavy-tailed errors, as a model's are
    scores = [regression_metrics(np.zeros(500), errors) for errors in draws]
    spread_of_maes = np.std([score["mae"] for score in scores])
    assert np.mean([score["mae_stderr"] for score in scores]) == pytest.approx(spread_of_maes, rel=0.1)
    assert regression_metrics(np.array([1.0]), np.array([1.5]))["mae_stderr"] is None  # one crystal: no spread to estimate


def test_the_result_line_gives_the_test_mae_with_its_standard_error():
    rng = np.random.default_rng(1)
    val, test = (regression_metrics(np.zeros(300), rng.normal(0.0, 0.05, 300)) for _ in range(2))
    line = result_line({"val": val, "test": test, "baseline_test_mae": 0.2}, "eV/atom")
    assert f"test MAE {test['mae']:.4g} ± {test['mae_stderr']:.2g} eV/atom (mean-predictor baseline 0.2)" in line
    del test["mae_stderr"]  # a metrics.json written before the standard error was recorded
    assert f"test MAE {test['mae']:.4g} eV/atom" in result_line({"val": val, "test": test, "baseline_test_mae": 0.2}, "eV/atom")
