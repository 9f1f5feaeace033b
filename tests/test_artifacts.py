"""Run-directory files: a predictions file is never cut short to the shorter of its columns."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from crystal_train.training import artifacts


def test_predictions_are_written_row_by_row_and_a_length_mismatch_is_refused(tmp_path):
    path = tmp_path / "predictions.csv"
    artifacts.write_predictions(path, ["a", "b"], np.array([0.5, -1.25]), targets=np.array([0.25, -1.0]))
    with open(path, newline="") as handle:
        assert list(csv.reader(handle)) == [["id", "target", "prediction"], ["a", "0.25", "0.5"], ["b", "-1.0", "-1.25"]]
    with pytest.raises(ValueError, match="2 ids but 0 values of prediction"):
        artifacts.write_predictions(tmp_path / "short.csv", ["a", "b"], np.array([]))
    assert not (tmp_path / "short.csv").exists()
