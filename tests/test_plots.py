"""Parity, ROC, learning-curve and errors-by-element plots: real, non-blank PNGs with the right labels and metrics."""

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from crystal_train.training.metrics import regression_metrics
from crystal_train.training.plots import (
    DPI,
    FIGSIZE,
    element_plot,
    learning_curve_plot,
    make_element_figure,
    make_learning_curve_figure,
    make_parity_figure,
    make_roc_figure,
    parity_annotation,
    parity_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_real_png(path, coloured=True):
    """A PNG of the configured size that is not blank and, for data plots, has coloured marks."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    rgb = imread(path)[..., :3]
    assert rgb.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert rgb.var() > 1e-3, "image is blank"
    # axes, ticks and text are grey; points, hexagons and curves are coloured
    coloured_fraction = float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2).mean())
    assert (coloured_fraction > 0.001) == coloured


def _texts(figure):
    return [text.get_text() for ax in figure.axes for text in ax.texts]


def _noisy(n, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(-3.0, 1.0, n)
    return targets, targets + rng.normal(0.0, 0.1, n)


def _history(epochs):
    return [
        dict(epoch=e, lr=1e-3 * 0.5 ** (e // 4), train_loss=2.0 / e, train_mae=1.0 / e, val_mae=1.2 / e + 0.01 * e, seconds=0.5)
        for e in range(1, epochs + 1)
    ]


def test_parity_annotation_formats_regression_metrics():
    # errors 0.1, -0.2, 0.3, -0.1: MAE 0.175, RMSE sqrt(0.15 / 4) = 0.194; R² = 1 - 0.15 / 8.75 (targets' mean 1.75) = 0.983
    text = parity_annotation(regression_metrics(np.array([0.0, 1.0, 2.0, 4.0]), np.array([0.1, 0.8, 2.3, 3.9])), "eV/atom")
    # absolute errors 0.1, 0.2, 0.3, 0.1: sample standard deviation 0.0957, over √4: standard error 0.048
    assert "MAE = 0.175 ± 0.048 eV/atom" in text
    assert "RMSE = 0.194 eV/atom" in text
    assert "R² = 0.983" in text
    assert "n = 4" in text
    assert "R² = n/a" in parity_annotation({"mae": 0.0, "rmse": 0.0, "r2": None, "n": 1}, "eV")


def test_parity_figure_labels_metrics_and_equal_limits():
    targets, predictions = _noisy(200)
    figure = make_parity_figure(targets, predictions, "band gap", "eV", split="val", title="CGCNN — val split")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "Reference band gap (eV)"
    assert ax.get_ylabel() == "Predicted band gap (eV)"
    assert ax.get_title() == "CGCNN — val split"
    assert ax.get_xlim() == ax.get_ylim()
    low, high = ax.get_xlim()
    assert low <= min(targets.min(), predictions.min()) and high >= max(targets.max(), predictions.max())
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(low, high)]  # the y = x diagonal
    assert any(parity_annotation(regression_metrics(targets, predictions), "eV") in text for text in _texts(figure))
    assert len(figure.axes) == 1  # scatter, no colourbar


def test_parity_figure_drops_non_finite_pairs():
    targets, predictions = _noisy(50)
    predictions[:3] = np.nan
    targets[3] = np.inf
    text = "\n".join(_texts(make_parity_figure(targets, predictions, "formation energy", "eV/atom")))
    assert "n = 46" in text
    assert "4 non-finite pairs dropped" in text
    scores = regression_metrics(targets[4:], predictions[4:])
    assert f"MAE = {scores['mae']:#.3g} ± {scores['mae_stderr']:.2g} eV/atom" in text


def test_parity_figure_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        make_parity_figure(np.zeros(3), np.zeros(2), "band gap", "eV")


def test_parity_plot_scatter_png(tmp_path):
    path = parity_plot(*_noisy(300), tmp_path / "plots" / "parity_test.png", "formation energy", "eV/atom")
    assert path == tmp_path / "plots" / "parity_test.png"
    _assert_real_png(path)


def test_a_plot_cut_short_leaves_the_earlier_png_whole(tmp_path, monkeypatch):
    path = parity_plot(*_noisy(50), tmp_path / "parity_test.png", "formation energy", "eV/atom")
    earlier = path.read_bytes()

    def killed_mid_write(self, handle, **kwargs):
        handle.write(PNG_MAGIC + b"half a plot")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        parity_plot(*_noisy(80, seed=1), path, "formation energy", "eV/atom")
    assert path.read_bytes() == earlier and [entry.name for entry in tmp_path.iterdir()] == ["parity_test.png"]


def test_parity_plot_hexbin_png_has_count_colourbar(tmp_path):
    targets, predictions = _noisy(5000)
    figure = make_parity_figure(targets, predictions, "formation energy", "eV/atom")
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "count"
    assert figure.axes[0].collections[0].get_array().sum() == 5000  # every point lands in a hexagon
    _assert_real_png(parity_plot(targets, predictions, tmp_path / "parity_dense.png", "formation energy", "eV/atom"))


def test_parity_plot_empty_input_says_no_data(tmp_path):
    figure = make_parity_figure(np.array([]), np.array([]), "band gap", "eV")
    assert "no data" in _texts(figure)
    _assert_real_png(parity_plot(np.array([]), np.array([]), tmp_path / "empty.png", "band gap", "eV"), coloured=False)


def test_learning_curve_figure_marks_best_epoch_and_lr_axis():
    history = _history(12)
    figure = make_learning_curve_figure(history, "eV/atom")
    ax, lr_ax = figure.axes
    assert ax.get_ylabel() == "MAE (eV/atom)"
    assert lr_ax.get_ylabel() == "learning rate" and lr_ax.get_yscale() == "log"
    best = min(history, key=lambda row: row["val_mae"])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["train MAE (running, training mode)", "val MAE"] and labels[-1] == "learning rate"
    assert f"best val {best['val_mae']:#.3g} eV/atom (epoch {best['epoch']})" in labels
    assert ax.get_yscale() == "log"  # MAE spans 1.0 .. 0.083 plus val, more than a decade


def test_learning_curve_marks_the_selected_epoch_when_given():
    """With trainer.min_delta the kept checkpoint need not be the lowest val MAE: the plot marks the kept one."""
    history = _history(12)
    lowest = min(history, key=lambda row: row["val_mae"])["epoch"]
    selected = next(row for row in history if row["epoch"] != lowest)
    labels = [t.get_text() for t in make_learning_curve_figure(history, "eV", best_epoch=selected["epoch"]).axes[0].get_legend().get_texts()]
    assert f"best val {selected['val_mae']:#.3g} eV (epoch {selected['epoch']})" in labels
    assert not any(label.endswith(f"(epoch {lowest})") for label in labels)


def test_learning_curve_linear_scale_for_narrow_range():
    history = [dict(epoch=e, lr=1e-3, train_loss=1.0, train_mae=0.5 - 0.01 * e, val_mae=0.6 - 0.01 * e, seconds=1.0) for e in (1, 2, 3)]
    assert make_learning_curve_figure(history, "eV").axes[0].get_yscale() == "linear"


def test_learning_curve_plot_png(tmp_path):
    _assert_real_png(learning_curve_plot(_history(30), tmp_path / "learning_curve.png", "eV/atom"))


def test_learning_curve_single_epoch(tmp_path):
    history = _history(1)
    ax = make_learning_curve_figure(history, "eV").axes[0]
    assert ax.get_xlim() == (0.0, 2.0)
    _assert_real_png(learning_curve_plot(history, tmp_path / "one.png", "eV"))


def test_learning_curve_tolerates_nan_val_mae():
    history = _history(3)
    for row, val_mae in zip(history, [math.nan, 0.3, 0.5]):
        row["val_mae"] = val_mae
    labels = [t.get_text() for t in make_learning_curve_figure(history, "eV").axes[0].get_legend().get_texts()]
    assert any(label.endswith("(epoch 2)") for label in labels)


def test_plots_leave_backend_and_pyplot_alone(tmp_path):
    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    parity_plot(*_noisy(20), tmp_path / "p.png", "band gap", "eV")
    learning_curve_plot(_history(3), tmp_path / "l.png", "eV")
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figures


def test_learning_curve_empty_history_says_no_data(tmp_path):
    assert "no data" in _texts(make_learning_curve_figure([], "eV"))
    _assert_real_png(learning_curve_plot([], tmp_path / "none.png", "eV"), coloured=False)


def test_annotation_keeps_three_significant_figures():
    text = parity_annotation({"mae": 0.06, "rmse": 0.1, "r2": 0.9, "n": 3}, "eV")
    assert "MAE = 0.0600 eV" in text and "RMSE = 0.100 eV" in text and "R² = 0.900" in text


def test_r2_is_undefined_for_a_single_target_value_not_a_huge_negative_number():
    assert regression_metrics(np.full(3, 0.1), np.full(3, 0.11))["r2"] is None
    assert regression_metrics(np.full(100, -0.7), np.full(100, -0.69))["r2"] is None
    assert regression_metrics(np.array([0.1, 0.2]), np.array([0.1, 0.2]))["r2"] == 1.0


def test_roc_figure_draws_the_curve_and_names_class_one_with_its_scores():
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    probabilities = np.array([0.1, 0.6, 0.4, 0.9, 0.8])
    figure = make_roc_figure(labels, probabilities, "band_gap <= 0")
    ax = figure.axes[0]
    diagonal, curve = ax.lines
    assert list(curve.get_xdata())[0] == 0.0 and list(curve.get_ydata())[-1] == 1.0
    # the curve passes through (0, 2/3) (two metals above every non-metal) and (1/2, 2/3) (0.6 before 0.4)
    assert {(x, round(y, 4)) for x, y in zip(curve.get_xdata(), curve.get_ydata())} >= {(0.0, 0.6667), (0.5, 0.6667)}
    (box,) = ax.texts
    assert box.get_text().splitlines() == ["class 1: band_gap <= 0", "ROC AUC = 0.833", "accuracy = 0.600", "F1 = 0.667", "n = 5"]
    one_class = make_roc_figure(np.ones(3), np.array([0.2, 0.7, 0.9]), "x").axes[0]
    assert len(one_class.lines) == 1 and one_class.texts[0].get_text().endswith("n = 3 (one class: no curve)")


def test_a_classifiers_learning_curve_shows_its_log_loss_without_units():
    history = [dict(epoch=e, lr=1e-3, train_loss=0.5 / e, train_log_loss=0.5 / e, val_log_loss=0.6 / e + 0.02 * e, seconds=1.0) for e in (1, 2, 3, 4)]
    ax = make_learning_curve_figure(history, "", best_epoch=3).axes[0]
    assert ax.get_ylabel() == "log loss"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["train log loss (running, training mode)", "val log loss"]
    assert f"best val {history[2]['val_log_loss']:#.3g} (epoch 3)" in labels


def test_the_element_table_colours_each_scored_element_by_its_value_in_its_periodic_table_cell(tmp_path):
    rows = [  # as errors_by_element gives them; Pt's R² is undefined, O has no MAE (as a split without it would not list it)
        {"element": "Li", "z": 3, "n": 12, "mae": 0.02}, {"element": "Fe", "z": 26, "n": 40, "mae": 0.08},
        {"element": "Ce", "z": 58, "n": 3, "mae": 0.05}, {"element": "Pt", "z": 78, "n": 1, "mae": 0.11},
        {"element": "O", "z": 8, "n": 5, "mae": None},
    ]
    figure = make_element_figure(rows, "mae", "eV/atom", split="val")
    ax = figure.axes[0]
    cells = {round(patch.get_x() + 0.47): patch for patch in ax.patches if round(patch.get_y() + 0.47, 1) == 4}  # row 4: K to Kr
    assert len(ax.patches) == 103  # H to Lr, lanthanides and actinides in their own rows
    colours = {z: patch.get_facecolor() for z, patch in zip(range(1, 104), ax.patches)}
    viridis = matplotlib.colormaps["viridis"]
    assert np.allclose(colours[3], viridis(0.0)) and np.allclose(colours[78], viridis(1.0))  # lowest and highest MAE
    assert np.allclose(colours[26], viridis((0.08 - 0.02) / (0.11 - 0.02)))
    assert np.allclose(colours[8], colours[1])  # no value: the grey of an element without crystals
    assert np.allclose(cells[8].get_facecolor(), colours[26])  # Fe sits in group 8 of row 4
    assert {"Fe", "0.08", "n=40", "Ce", "n=3"} <= set(_texts(figure)) and "n=5" not in _texts(figure)
    assert figure.axes[1].get_ylabel() == "val MAE (eV/atom)" and ax.get_title() == "val split, by element"

    # a value that is not finite (a diverged model's) is left grey, and the others keep their colours
    with_nan = make_element_figure([*rows, {"element": "Si", "z": 14, "n": 2, "mae": math.nan}], "mae", "eV/atom")
    nan_colours = {z: patch.get_facecolor() for z, patch in zip(range(1, 104), with_nan.axes[0].patches)}
    assert np.allclose(nan_colours[14], colours[1]) and all(np.allclose(nan_colours[z], colours[z]) for z in (3, 26, 58, 78))

    path = element_plot(rows, tmp_path / "errors_by_element_val.png", "mae", "eV/atom", split="val")
    assert path.read_bytes()[:8] == PNG_MAGIC and imread(path)[..., :3].var() > 1e-3
