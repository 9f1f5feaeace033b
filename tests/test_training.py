"""Training behaviour: resume after a kill, early stopping, non-finite losses, sweeps, torchrun, LR, refused settings."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

import crystal_train.training.loop as loop
from crystal_train.atomic_file import LockHeldError, held_or_refused
from crystal_train.training.evaluation import evaluate
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.graphs import GRAPH_VERSION
from crystal_train.train import torchrun_arguments
from crystal_train.training.checkpoint import load_checkpoint, recover_interrupted_saves, save_checkpoint
from crystal_train.training.resume import ABSENT, ResumeConfigError, check_same_lr_scale, check_same_training, config_changes
from crystal_train.training.run import FINAL_RESULTS, RUN_LOCK, train
from crystal_train.training.sweep import SUMMARY_COLUMNS, summarize_sweep
from config_utils import compose_config

BIN = Path(sys.executable).parent
CRYSTAL_TRAIN = str(BIN / "crystal-train")
TORCHRUN = str(BIN / "torchrun")
SMALL = ["data=demo", "data.num_crystals=120", "model.n_conv=1", "trainer.batch_size=16", "seed=3"]
QUIET_CPU = ["trainer.device=cpu", "trainer.progress_bar=false"]


def _env() -> dict:
    """Subprocess environment: one thread per process on the shared 2-core machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _history(run_dir: Path) -> list[dict]:
    """history.csv rows that are complete (a file being rewritten may end mid-row)."""
    path = Path(run_dir) / "history.csv"
    try:
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return []
    return [row for row in rows if all(row.get(column) not in (None, "") for column in ("epoch", "lr", "train_loss", "train_mae", "val_mae", "seconds"))]


def _metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One graph cache for the in-process trainings of this module (the demo data is built once)."""
    return tmp_path_factory.mktemp("training_cache")


@pytest.fixture
def small_cfg(compose_train_cfg, shared_cache, tmp_path):
    """small_cfg(*overrides): the tiny demo training config on CPU with the module's graph cache."""

    def make(*overrides: str):
        return compose_train_cfg([*SMALL, f"data.cache_dir={shared_cache}", *overrides], tmp_path)

    return make


@pytest.mark.parametrize(("model", "distinct"), [("schnet", True), ("cgcnn", False)])
def test_training_batches_carry_distinct_distances_only_for_a_model_that_uses_them(
    compose_train_cfg, shared_cache, tmp_path, monkeypatch, model, distinct
):
    import crystal_train.training.run as run_module

    asked, real = [], run_module.DeviceGraphs
    monkeypatch.setattr(run_module, "DeviceGraphs", lambda *args, **kwargs: asked.append(kwargs.get("distinct_distances")) or real(*args, **kwargs))
    overrides = ["data=demo", "data.num_crystals=120", f"model={model}", "trainer.batch_size=16", "trainer.max_epochs=1", "seed=3"]
    train(compose_train_cfg([*overrides, f"data.cache_dir={shared_cache}"], tmp_path), tmp_path / "run")
    assert asked == [distinct]


# ----- 1. resume after SIGKILL --------------------------------------------------------------


def _train_command(run_dir: Path, cache: Path, max_epochs: int) -> list[str]:
    return [
        CRYSTAL_TRAIN, *SMALL, f"trainer.max_epochs={max_epochs}", "trainer.patience=100", "trainer.deterministic=true",
        *QUIET_CPU, f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}",
    ]


def _kill_after_epochs(command: list[str], run_dir: Path, epochs: int, cwd: Path, timeout: float = 180, sig=signal.SIGKILL) -> int:
    """Start `command`, send it `sig` as soon as history.csv has `epochs` rows; rows written by then.

    SIGKILL must kill it; SIGINT (Ctrl-C) must end it with status 130 and SIGTERM with 143.
    """
    process = subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # as at a terminal: a shell's background job (a CI script run with &) passes SIGINT on as ignored, and Python
        # then never raises KeyboardInterrupt for it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    try:
        while len(_history(run_dir)) < epochs:
            if process.poll() is not None:
                pytest.fail(f"training exited (rc {process.returncode}) before writing {epochs} epochs")
            if time.monotonic() > deadline:
                pytest.fail(f"no {epochs} epochs in history.csv after {timeout} s")
            time.sleep(0.002)
        os.kill(process.pid, sig)
        assert process.wait(timeout=60) == {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return len(_history(run_dir))


def _assert_same_history(resumed: list[dict], reference: list[dict]) -> None:
    assert [int(r["epoch"]) for r in resumed] == [int(r["epoch"]) for r in reference]
    for got, want in zip(resumed, reference):
        for column in ("lr", "train_loss", "train_mae", "val_mae"):
            assert float(got[column]) == pytest.approx(float(want[column]), rel=0, abs=1e-12), (got["epoch"], column)


@pytest.mark.slow
def test_cli_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    cache, killed_dir, reference_dir = tmp_path / "cache", tmp_path / "killed", tmp_path / "reference"
    max_epochs = 6
    # The uninterrupted reference runs alongside the one that gets killed (the cache lock makes
    # one of them build the graphs and the other load them).
    reference = subprocess.Popen(
        _train_command(reference_dir, cache, max_epochs), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        rows_at_kill = _kill_after_epochs(_train_command(killed_dir, cache, max_epochs), killed_dir, 3, cwd=tmp_path)
        reference_output, _ = reference.communicate(timeout=300)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert reference.returncode == 0, reference_output[-3000:]

    # The kill came after epoch 3 and before the run ended.
    assert 3 <= rows_at_kill < max_epochs
    assert not (killed_dir / "metrics.json").exists()
    killed_at = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["train_state"]["epoch"]
    assert 3 <= killed_at < max_epochs

    resumed = subprocess.run(
        _train_command(killed_dir, cache, max_epochs), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    log = (killed_dir / "train.log").read_text()
    assert f"after epoch {killed_at}" in log  # it resumed, it did not restart
    assert f"Results in {killed_dir} (metrics.json" in log and f"crystal-predict ckpt={killed_dir / 'checkpoints' / 'best.pt'} input=" in log
    assert (killed_dir / "config.previous-1.yaml").is_file()
    assert (killed_dir / "config.yaml").is_file()

    reference_history = _history(reference_dir)
    assert len(reference_history) == max_epochs
    _assert_same_history(_history(killed_dir), reference_history)
    got, want = _metrics(killed_dir), _metrics(reference_dir)
    assert got["epochs"] == want["epochs"] == max_epochs and got["seed"] == want["seed"] == 3
    assert got["best_epoch"] == want["best_epoch"]
    for split in ("val", "test"):
        assert got[split]["n"] == want[split]["n"]
        for name in ("mae", "rmse", "r2"):
            assert got[split][name] == pytest.approx(want[split][name], rel=0, abs=1e-12), (split, name)


class _KilledBetweenWrites(BaseException):
    """Stands in for a SIGKILL that lands after last.pt is written and before best.pt is."""


@pytest.mark.slow
def test_kill_between_last_and_best_writes_is_repaired_on_resume(small_cfg, tmp_path, monkeypatch, caplog):
    # Every epoch improves on validation, so every epoch writes both checkpoints.
    monkeypatch.setattr(loop.Trainer, "_validate", lambda self: 1.0 / (self.state.epoch + 1))
    save = loop.save_checkpoint

    def save_then_die_before_best_of_epoch_3(path, **contents):
        if Path(path).name == "best.pt" and contents["train_state"]["epoch"] == 3:
            raise _KilledBetweenWrites
        save(path, **contents)

    cfg = small_cfg("trainer.max_epochs=3", "trainer.patience=100")
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_die_before_best_of_epoch_3)
        with pytest.raises(_KilledBetweenWrites):
            train(cfg, run_dir)
    assert load_checkpoint(checkpoints / "last.pt")["train_state"]["best_epoch"] == 3
    assert load_checkpoint(checkpoints / "best.pt")["train_state"]["epoch"] == 2  # stale
    (checkpoints / ".last.pt.x1y2z3.tmp").write_bytes(b"")  # what a kill mid-write leaves
    (run_dir / ".history.csv.a1b2c3.tmp").write_bytes(b"epoch,lr")  # and in the run directory

    with caplog.at_level(logging.INFO, logger="crystal_train.training"):
        train(cfg, run_dir)  # resumes after epoch 3: nothing left to train, only scoring

    last, best = load_checkpoint(checkpoints / "last.pt"), load_checkpoint(checkpoints / "best.pt")
    assert best["train_state"]["epoch"] == 3 == _metrics(run_dir)["best_epoch"]
    assert best["model_state"].keys() == last["model_state"].keys()
    assert all(torch.equal(best["model_state"][k], last["model_state"][k]) for k in last["model_state"])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    assert "Rewrote" in caplog.text and "cut short" in caplog.text
    assert not list(run_dir.glob(".*.tmp")) and ".history.csv.a1b2c3.tmp, left by a write that was cut short" in caplog.text


@pytest.mark.slow
def test_resuming_a_run_trained_on_older_graphs_warns_and_continues(small_cfg, tmp_path, caplog):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    train(small_cfg("trainer.max_epochs=1"), run_dir)
    saved = load_checkpoint(last)
    save_checkpoint(last, **{key: value for key, value in saved.items() if key != "graph_version"})  # as written before the record
    with caplog.at_level(logging.WARNING):
        train(small_cfg("trainer.max_epochs=2"), run_dir)
    assert f"{last} was trained on graphs of version 1; this crystal-train builds version {GRAPH_VERSION}" in caplog.text
    resumed = load_checkpoint(last)
    assert resumed["train_state"]["epoch"] == 2 and resumed["graph_version"] == 1  # trained on both, so the older


def test_resume_keeps_and_warns_about_a_best_checkpoint_it_cannot_restore(tmp_path, caplog):
    # last.pt's best epoch (3) is neither on disk nor last.pt itself (epoch 5): nothing to restore from.
    save_checkpoint(tmp_path / "best.pt", train_state={"epoch": 4, "best_epoch": 4}, model_state={"w": torch.ones(2)})
    last = {"train_state": {"epoch": 5, "best_epoch": 3}, "model_state": {"w": torch.zeros(2)}}
    with caplog.at_level(logging.WARNING, logger="crystal_train.training.checkpoint"):
        recover_interrupted_saves(tmp_path, last)
    assert "holds epoch 4, not the best epoch 3" in caplog.text
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model_state"]["w"], torch.ones(2))


def _resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config("train", ["data=demo", "seed=3", *overrides]), resolve=True)


def test_resume_allows_a_longer_run_but_not_a_changed_cosine_schedule_or_learning_rate(tmp_path):
    last = tmp_path / "last.pt"
    plateau = _resolved("trainer.max_epochs=5")
    check_same_training(plateau, _resolved("trainer.max_epochs=9", "trainer.device=cpu", "logger.tensorboard=true"), last)

    cosine = _resolved("scheduler=cosine", "trainer.max_epochs=5")
    with pytest.raises(ResumeConfigError, match=r"scheduler\.T_max: 5 -> 9") as refused:
        check_same_training(cosine, _resolved("scheduler=cosine", "trainer.max_epochs=9", "optim.lr=0.01"), last)
    assert "optim.lr: 0.001 -> 0.01" in str(refused.value) and "trainer.max_epochs" not in str(refused.value)
    assert str(last) in str(refused.value)


def test_resume_takes_the_same_snapshot_spelled_otherwise_but_not_another_one(tmp_path, monkeypatch):
    (tmp_path / "data.csv").write_text("x")
    (tmp_path / "other.csv").write_text("x")
    saved = _resolved("data.snapshot=data.csv")  # trained from tmp_path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_same_training(saved, _resolved(f"data.snapshot={tmp_path / 'data.csv'}"), tmp_path / "last.pt", str(tmp_path))
    check_same_training(saved, _resolved("data.snapshot=../data.csv"), tmp_path / "last.pt", str(tmp_path))
    with pytest.raises(ResumeConfigError, match=r"data\.snapshot: 'data\.csv' -> '.*other\.csv'"):
        check_same_training(saved, _resolved(f"data.snapshot={tmp_path / 'other.csv'}"), tmp_path / "last.pt", str(tmp_path))
    with pytest.raises(ResumeConfigError, match=r"data\.snapshot"):  # a checkpoint that saved no launch directory
        check_same_training(saved, _resolved(f"data.snapshot={tmp_path / 'data.csv'}"), tmp_path / "last.pt")


def test_resume_true_without_a_checkpoint_is_refused_and_starts_nothing(small_cfg, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.csv").write_text("epoch\n1\n")  # an earlier training's, without checkpoints
    with pytest.raises(FileNotFoundError, match=f"trainer.resume=true but there is no {re.escape(str(run_dir / 'checkpoints' / 'last.pt'))}"):
        train(small_cfg("trainer.resume=true", "trainer.max_epochs=1"), run_dir)
    assert sorted(path.name for path in run_dir.iterdir()) == [RUN_LOCK, "history.csv"]


def test_a_run_without_a_seed_draws_one_and_records_it(small_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(small_cfg("seed=null", "trainer.max_epochs=1"), run_dir)
    seed = OmegaConf.load(run_dir / "config.yaml").seed
    assert isinstance(seed, int) and _metrics(run_dir)["seed"] == seed
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["seed"] == seed


def test_resume_may_add_gradient_clipping_the_divergence_message_advises(tmp_path):
    check_same_training(_resolved(), _resolved("trainer.grad_clip=1.0"), tmp_path / "last.pt")


@pytest.mark.parametrize("setting, shown", [("yes", "yes"), ("ture", "ture"), ("1", "1"), ("null", "none")])
def test_a_resume_setting_other_than_auto_true_or_false_is_refused_not_taken_as_starting_over(small_cfg, tmp_path, setting, shown):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"a training's checkpoint")
    with pytest.raises(ValueError, match=rf"trainer.resume must be auto, true or false, not '{shown}'"):
        train(small_cfg(f"trainer.resume={setting}", "trainer.max_epochs=1"), run_dir)
    assert sorted(path.name for path in run_dir.iterdir()) == [RUN_LOCK, "checkpoints"]  # nothing set aside


def test_resume_allows_a_setting_added_since_only_at_its_null_default(tmp_path):
    saved = _resolved()
    del saved["trainer"]["ema_decay"]  # last.pt written before trainer.ema_decay existed
    check_same_training(saved, _resolved(), tmp_path / "last.pt")
    with pytest.raises(ResumeConfigError, match=r"trainer\.ema_decay: \(absent\) -> 0\.999"):
        check_same_training(saved, _resolved("trainer.ema_decay=0.999"), tmp_path / "last.pt")


def test_resume_on_another_number_of_ranks_is_refused_only_when_the_lr_was_scaled_to_them(tmp_path):
    last = tmp_path / "last.pt"
    linear = OmegaConf.create({"batch_size": 64, "lr_scaling": "linear"})
    with pytest.raises(ResumeConfigError, match=r"on 1 rank\(s\): it trained on 4, and trainer.lr_scaling=linear .*\(64 × 4 then, 64 × 1 now\)"):
        check_same_lr_scale(4, 1, linear, last)
    check_same_lr_scale(4, 4, linear, last)
    check_same_lr_scale(4, 1, OmegaConf.create({"batch_size": 64, "lr_scaling": "none"}), last)
    check_same_lr_scale(None, 1, linear, last)  # a checkpoint from before world_size was recorded


def test_config_changes_names_changed_added_and_removed_keys():
    saved = {"model": {"n_conv": 3, "h": [1, 2]}, "optim": {"lr": 0.1}, "old": 1}
    current = {"model": {"n_conv": 4, "h": [1, 2]}, "optim": {"lr": 0.1, "betas": [0.9, 0.99]}}
    assert list(config_changes(saved, current)) == ["model.n_conv", "old", "optim.betas"]
    assert config_changes(saved, current)["old"] == (1, ABSENT) and config_changes(saved, current)["model.n_conv"] == (3, 4)
    assert config_changes(saved, saved) == {}


@pytest.mark.slow
def test_resume_with_a_changed_model_stops_before_touching_the_run(small_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(small_cfg("trainer.max_epochs=1"), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ResumeConfigError, match=r"model\.n_conv: 1 -> 2"):
        train(small_cfg("trainer.max_epochs=2", "model.n_conv=2"), run_dir)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    assert not (run_dir / "config.previous-1.yaml").exists()

    train(small_cfg("trainer.max_epochs=2"), run_dir)  # a longer run with the same settings continues
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2]
    assert _metrics(run_dir)["epochs"] == 2


@pytest.mark.slow
def test_resume_on_data_that_changed_under_the_same_settings_stops_before_touching_the_run(compose_train_cfg, write_csv, good_rows, tmp_path):
    for row, split in zip(good_rows, ["train", "train", "train", "val", "test"]):
        row["split"] = split
    settings = ["model.n_conv=1", "trainer.batch_size=2", "seed=0", f"data.snapshot={write_csv(good_rows)}"]
    run_dir = tmp_path / "run"
    train(compose_train_cfg([*settings, "trainer.max_epochs=1"], tmp_path), run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("checkpoints/last.pt", "config.yaml", "split.json")}
    longer = compose_train_cfg([*settings, "trainer.max_epochs=2"], tmp_path)

    good_rows[2]["split"], good_rows[3]["split"] = "val", "train"  # the snapshot edited in place
    write_csv(good_rows)
    with pytest.raises(ResumeConfigError, match=r"the train split gained 1 and lost 1 crystal\(s\) \(\+mp-mgo, -mp-cu\); the val split"):
        train(longer, run_dir)
    good_rows[2]["split"], good_rows[3]["split"] = "train", "val"
    good_rows[0]["formation_energy_per_atom"] += 1.0
    write_csv(good_rows)
    with pytest.raises(ResumeConfigError, match=r"the training targets changed \(mean -1 -> -0\.666667"):
        train(longer, run_dir)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert not (run_dir / "config.previous-1.yaml").exists()

    good_rows[0]["formation_energy_per_atom"] -= 1.0
    write_csv(good_rows)
    train(longer, run_dir)  # the original data again: it continues
    assert _metrics(run_dir)["epochs"] == 2


def test_a_run_directory_another_training_is_writing_to_is_refused(small_cfg, tmp_path):
    run_dir = tmp_path / "run"
    with held_or_refused(run_dir / RUN_LOCK, "test holds it"):
        with pytest.raises(LockHeldError, match=rf"another crystal-train run is writing to {re.escape(str(run_dir))}: give this one another"):
            train(small_cfg("trainer.max_epochs=1"), run_dir)
        command = [CRYSTAL_TRAIN, *SMALL, "trainer.max_epochs=1", *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
        result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "another crystal-train run is writing to" in result.stdout + result.stderr
    # the directory's files are the running training's: the refused one wrote nothing there, not even Hydra's .hydra/ and log
    assert [path.name for path in run_dir.iterdir()] == [RUN_LOCK]


@pytest.mark.slow
def test_a_resumed_run_that_dies_leaves_no_results_of_the_run_before(small_cfg, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(small_cfg("trainer.max_epochs=1"), run_dir)
    assert [name for name in FINAL_RESULTS if not (run_dir / name).exists()] == ["roc_test.png"]  # a classifier's plot

    def dies(self):
        raise MemoryError("killed (simulated)")

    monkeypatch.setattr(loop.Trainer, "fit", dies)
    with pytest.raises(MemoryError):
        train(small_cfg("trainer.max_epochs=2"), run_dir)
    assert not any((run_dir / name).exists() for name in FINAL_RESULTS)  # a sweep summary must not read them as this run's
    assert (run_dir / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_starting_over_moves_the_training_before_aside_and_a_death_leaves_none_of_it(small_cfg, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(small_cfg("trainer.max_epochs=2"), run_dir)
    earlier = {name: (run_dir / name).read_bytes() for name in ("metrics.json", "history.csv", "checkpoints/best.pt", "config.yaml")}

    def dies(self):
        raise MemoryError("killed (simulated)")

    monkeypatch.setattr(loop.Trainer, "fit", dies)
    with pytest.raises(MemoryError):
        train(small_cfg("trainer.max_epochs=1", "trainer.resume=false", "optim.lr=0.01"), run_dir)
    left = [name for name in (*FINAL_RESULTS, "history.csv", "checkpoints/last.pt", "checkpoints/best.pt") if (run_dir / name).exists()]
    assert left == []  # nothing of the training before is taken for this one's, nor resumed by trainer.resume=auto
    assert {name: (run_dir / "previous-1" / name).read_bytes() for name in earlier} == earlier
    assert OmegaConf.load(run_dir / "config.yaml").optim.lr == 0.01

    monkeypatch.undo()
    cut_short = [run_dir / "checkpoints" / ".last.pt.x1y2.tmp", run_dir / ".split.json.x1y2.tmp"]  # a kill during a first write
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    for leftover in cut_short:
        leftover.write_bytes(b"part of a file")
    train(small_cfg("trainer.max_epochs=1", "trainer.resume=false", "optim.lr=0.01"), run_dir)
    assert not any(leftover.exists() for leftover in cut_short)
    assert not (run_dir / "previous-2").exists()  # the run that died had trained nothing to keep
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1] and _metrics(run_dir)["epochs"] == 1
    train(small_cfg("trainer.max_epochs=1", "trainer.resume=false", "optim.lr=0.02"), run_dir)
    assert OmegaConf.load(run_dir / "previous-2" / "config.yaml").optim.lr == 0.01
    assert _metrics(run_dir / "previous-2")["epochs"] == 1 and OmegaConf.load(run_dir / "config.yaml").optim.lr == 0.02


@pytest.mark.slow
def test_resume_refuses_a_changed_seed_and_may_raise_the_patience_of_a_stopped_run(small_cfg, tmp_path):
    # min_delta larger than any val MAE: only epoch 1 improves, so patience=1 stops after epoch 2.
    stopping = ("trainer.max_epochs=10", "trainer.min_delta=1000")
    run_dir = tmp_path / "run"
    train(small_cfg(*stopping, "trainer.patience=1"), run_dir)
    assert _metrics(run_dir)["epochs"] == 2
    with pytest.raises(ResumeConfigError, match=r"seed: 3 -> 4"):
        train(small_cfg(*stopping, "trainer.patience=3", "seed=4"), run_dir)

    train(small_cfg(*stopping, "trainer.patience=3", "seed=null"), run_dir)  # no seed given: the saved one is used
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2, 3, 4]
    assert _metrics(run_dir)["epochs"] == 4 and _metrics(run_dir)["seed"] == 3


# ----- 2. early stopping ----------------------------------------------------------------------


@pytest.mark.slow
def test_early_stopping_keeps_and_scores_the_best_checkpoint(small_cfg, tmp_path):
    # min_delta larger than any val MAE: only the first epoch counts as an improvement.
    cfg = small_cfg("trainer.max_epochs=10", "trainer.patience=2", "trainer.min_delta=1000")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    best_val = train(cfg, run_dir)

    metrics = _metrics(run_dir)
    assert metrics["epochs"] == 3 and metrics["best_epoch"] == 1
    history = _history(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert best_val == pytest.approx(float(history[0]["val_mae"]), rel=1e-12)
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["train_state"]["epoch"] == 1
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["epoch"] == 3

    scores = {}
    for name in ("best", "last"):
        eval_cfg = compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / f'{name}.pt'}", f"output={tmp_path / name}", "device=cpu"])
        scores[name] = evaluate(eval_cfg)["test"]["mae"]
    assert metrics["test"]["mae"] == pytest.approx(scores["best"], abs=1e-6)
    assert abs(metrics["test"]["mae"] - scores["last"]) > 1e-6


# ----- 3. non-finite loss ---------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(small_cfg, tmp_path, monkeypatch):
    cfg = small_cfg("trainer.max_epochs=6", "trainer.patience=100")
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    batches_per_epoch = math.ceil(len(data.splits["train"]) / int(cfg.trainer.batch_size))
    mse = loop.LOSSES["mse"]
    calls = []

    def mse_nan_from_epoch_3(output, target):
        epoch = len(calls) // batches_per_epoch + 1
        calls.append(epoch)
        loss = mse(output, target)
        return loss * float("nan") if epoch >= 3 else loss

    monkeypatch.setitem(loop.LOSSES, "mse", mse_nan_from_epoch_3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(loop.NonFiniteLossError, match="epoch 3") as error:
        train(cfg, run_dir)
    assert str(last) in str(error.value)
    assert calls.count(3) == batches_per_epoch and max(calls) == 3  # stopped at the end of epoch 3

    checkpoint = load_checkpoint(last)
    assert checkpoint["train_state"]["epoch"] == 2
    weights = checkpoint["model_state"]
    assert weights and all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1, 2]
    assert not (run_dir / "metrics.json").exists()

    assert "Resume it with trainer.grad_clip set" in str(error.value)  # as the message advises:
    monkeypatch.undo()
    train(small_cfg("trainer.max_epochs=3", "trainer.patience=100", "trainer.grad_clip=1.0"), run_dir)
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1, 2, 3] and _metrics(run_dir)["epochs"] == 3


@pytest.mark.slow
def test_nan_validation_stops_training_and_keeps_the_last_good_checkpoint(small_cfg, tmp_path, monkeypatch):
    validate = loop.Trainer._validate
    monkeypatch.setattr(loop.Trainer, "_validate", lambda self: math.nan if self.state.epoch >= 1 else validate(self))
    run_dir = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError, match="non-finite validation MAE in epoch 2") as error:
        train(small_cfg("trainer.max_epochs=4", "trainer.patience=100"), run_dir)
    assert str(run_dir / "checkpoints" / "last.pt") in str(error.value)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["epoch"] == 1
    assert [int(r["epoch"]) for r in _history(run_dir)] == [1]


@pytest.mark.slow
def test_cli_exits_with_status_2_and_a_message_on_a_diverging_run(tmp_path):
    # With Adam every weight moves by about lr in the first step: lr=1e30 overflows float32.
    command = [
        CRYSTAL_TRAIN, *SMALL, "trainer.max_epochs=2", "optim.lr=1e30", *QUIET_CPU,
        f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "non-finite training loss in epoch 1" in output
    assert "no checkpoint had been written yet" in output and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_cli_refused_resume_exits_with_status_2_and_leaves_the_runs_hydra_record_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    common = [CRYSTAL_TRAIN, *SMALL, *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    first = subprocess.run([*common, "trainer.max_epochs=1"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    record = {path.name: path.read_bytes() for path in (run_dir / ".hydra").glob("*.yaml")}
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}

    refused = subprocess.run([*common, "trainer.max_epochs=2", "optim.lr=0.01"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    assert "optim.lr: 0.001 -> 0.01" in refused.stdout + refused.stderr
    assert {path.name: path.read_bytes() for path in (run_dir / ".hydra").glob("*.yaml")} == record

    resumed = subprocess.run([*common, "trainer.max_epochs=2"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "trainer.max_epochs=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # a launch that trains records itself


@pytest.mark.slow
def test_cli_reports_a_bad_setting_in_one_line_and_keeps_the_traceback_in_error_txt(tmp_path):
    run_dir = tmp_path / "run"
    command = [CRYSTAL_TRAIN, *SMALL, "+trainer.max_epoch=2", *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "ValueError: unknown setting trainer.max_epoch (did you mean trainer.max_epochs?)" in output
    assert f"(the traceback is in {run_dir / 'error.txt'})" in output and "Traceback" not in output
    error = (run_dir / "error.txt").read_text()
    assert error.startswith("ValueError: unknown setting trainer.max_epoch") and "Traceback (most recent call last)" in error

    fixed = [CRYSTAL_TRAIN, *SMALL, "trainer.max_epochs=1", *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(fixed, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert not (run_dir / "error.txt").exists()  # it described the failed attempt, not this run


@pytest.mark.slow
def test_ctrl_c_ends_a_run_with_status_130_and_says_how_to_resume_it(tmp_path):
    run_dir = tmp_path / "run"
    command = _train_command(run_dir, tmp_path / "cache", 50)
    _kill_after_epochs(command, run_dir, 2, cwd=tmp_path, sig=signal.SIGINT)
    log = (run_dir / "train.log").read_text()
    assert f"Interrupted: {run_dir / 'checkpoints' / 'last.pt'} holds the last finished epoch" in log
    assert f"run the same command with hydra.run.dir={run_dir} to continue" in log
    assert "Traceback" not in log and not (run_dir / "error.txt").exists() and not (run_dir / "metrics.json").exists()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["epoch"] >= 2


@pytest.mark.slow
def test_sigterm_ends_a_run_with_status_143_and_it_resumes(tmp_path):
    """A batch scheduler's time limit or preemption sends SIGTERM: the run stops with a note, and the same command goes on."""
    run_dir = tmp_path / "run"
    command = _train_command(run_dir, tmp_path / "cache", 4)
    rows = _kill_after_epochs(command, run_dir, 2, cwd=tmp_path, sig=signal.SIGTERM)
    log = (run_dir / "train.log").read_text()
    assert f"Terminated (SIGTERM): {run_dir / 'checkpoints' / 'last.pt'} holds the last finished epoch" in log
    assert "Traceback" not in log and not (run_dir / "error.txt").exists()
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2, 3, 4] and rows >= 2
    assert re.search(r"Resumed from \S+last\.pt after epoch [23]\b", (run_dir / "train.log").read_text())


# crystal-train with build_graph slowed down, sending SIGTERM to the main process at the 5th graph of the main process
# or of each pool worker; with SIGTERM_ONCE=1, only the first of those.
_TERMINATED_IN_THE_GRAPH_BUILD = """
import os, signal, sys, time
import crystal_train.data.store as store
from crystal_train.cli.train import main
built, real, main_pid = [0], store.build_graph, os.getpid()
def build_graph(*args, **kwargs):
    built[0] += 1
    if built[0] == 5 and not (os.environ["SIGTERM_ONCE"] == "1" and os.path.exists("signalled")):
        open("signalled", "w").close()
        os.kill(main_pid, signal.SIGTERM)
    time.sleep(0.02)
    return real(*args, **kwargs)
store.build_graph = build_graph
sys.argv = ["crystal-train", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("crystals", "once"), [(150, True), (1000, True), (1000, False)])  # the pool builds from 200
def test_sigterm_in_the_graph_build_stops_the_run_with_nothing_cached_or_skipped(tmp_path, crystals, once):
    cache = tmp_path / "cache"
    command = [
        sys.executable, "-c", _TERMINATED_IN_THE_GRAPH_BUILD, "data=demo", f"data.num_crystals={crystals}", *QUIET_CPU,
        f"data.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    started = time.monotonic()
    # Returns only once every process holding its output has ended: no pool worker is left behind.
    result = subprocess.run(command, cwd=tmp_path, env=_env() | {"SIGTERM_ONCE": str(int(once))}, capture_output=True, text=True, timeout=120)
    # Once: the note and status 143. A second SIGTERM ends the process at once (a shell reports that as 143 too).
    assert result.returncode in ((143,) if once else (143, -signal.SIGTERM)), (result.stdout + result.stderr)[-3000:]
    assert "Terminated (SIGTERM) before the first epoch finished" in result.stdout
    assert time.monotonic() - started < 60  # not after every queued crystal (1000 × 0.02 s over two workers) was built
    assert not list(cache.glob("graphs/graphs-*.pt")) and not (tmp_path / "run" / "skipped.csv").exists()


def test_the_interrupt_note_of_a_run_that_started_over_does_not_advise_starting_over_again(tmp_path, caplog):
    from crystal_train.cli.train import _report_interrupt

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        _report_interrupt(tmp_path, "false")
    assert f"run the same command with trainer.resume=auto (not false, which starts over) with hydra.run.dir={tmp_path}" in caplog.text


def test_a_busy_run_directory_is_refused_before_hydra_except_on_the_ranks_that_never_lock_it(tmp_path, monkeypatch):
    import crystal_train.cli.train as cli_train

    started = []
    monkeypatch.setattr(cli_train, "train_job", lambda: started.append(True))
    monkeypatch.setattr(sys, "argv", ["crystal-train", "data=demo", f"hydra.run.dir={tmp_path}"])
    with held_or_refused(tmp_path / RUN_LOCK, "test holds it"):
        with pytest.raises(SystemExit, match=f"another crystal-train run is writing to {re.escape(str(tmp_path))}"):
            cli_train.main()
        monkeypatch.setenv("RANK", "1")  # torchrun's other ranks start while rank 0 may already hold it
        cli_train.main()
    assert started == [True]


# ----- 4. multirun ----------------------------------------------------------------------------


@pytest.mark.slow
def test_multirun_builds_the_graph_cache_once_and_writes_a_sorted_summary(tmp_path):
    """Jobs that diverge (lr=1e30) or are refused (batch_size=1) fail alone: the others run, the summary lists them last."""
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    command = [
        CRYSTAL_TRAIN, "-m", "data=demo", "data.num_crystals=100", "model.n_conv=1", "trainer.max_epochs=1", *QUIET_CPU,
        "optim.lr=1e-3,1e30", "trainer.batch_size=1,16,32", f"data.cache_dir={cache}", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]  # every job ran, and a script can tell some failed

    assert len(list((cache / "graphs").glob("graphs-*.pt"))) == 1
    logs = sorted(sweep.glob("*/train.log"))
    assert [log.parent.name for log in logs] == ["0", "1", "2", "3", "4", "5"]
    text = "".join(log.read_text() for log in logs)
    assert text.count("Graph cache built") == 1
    assert text.count("Graph cache loaded") == 3  # the two batch_size=1 jobs are refused before reading any data
    assert text.count("trainer.batch_size=1 is too small for CGCNN") == 2
    assert text.count("non-finite training loss in epoch 1") == 2
    assert "4 of 6 jobs failed" in result.stdout + result.stderr

    with open(sweep / "sweep_summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "failed", "failed", "failed"]
    swept = []
    for row in rows:
        overrides = dict(override.split("=", 1) for override in row["overrides"].split())
        swept.append((row["status"], float(overrides["optim.lr"]), int(overrides["trainer.batch_size"])))
    assert sorted(swept) == [
        ("failed", 1e-3, 1), ("failed", 1e30, 1), ("failed", 1e30, 16), ("failed", 1e30, 32), ("ok", 1e-3, 16), ("ok", 1e-3, 32),
    ]
    ok, failed = rows[:2], rows[2:]
    assert float(ok[0]["val_mae"]) <= float(ok[1]["val_mae"])
    for row in ok:
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == sweep
        assert float(row["val_mae"]) == pytest.approx(_metrics(run_dir)["val"]["mae"], rel=1e-12)
        assert float(row["test_mae_stderr"]) == pytest.approx(_metrics(run_dir)["test"]["mae_stderr"], rel=1e-12)
        assert float(row["test_mae_stderr"]) > 0
        assert int(row["epochs"]) == 1 and float(row["train_seconds"]) == pytest.approx(_metrics(run_dir)["train_seconds"])
    for row in failed:
        assert row["val_mae"] == "" and not (Path(row["run_dir"]) / "metrics.json").exists()
    errors = sorted((Path(row["run_dir"]) / "error.txt").read_text().split(":")[0] for row in failed)
    assert errors == ["NonFiniteLossError"] * 2 + ["ValueError"] * 2
    refused = [Path(row["run_dir"]) for row in failed if (Path(row["run_dir"]) / "error.txt").read_text().startswith("ValueError")]
    assert all("Traceback (most recent call last)" in (run_dir / "error.txt").read_text() for run_dir in refused)
    assert "Traceback" not in result.stdout + result.stderr + text  # one line per failed job; the tracebacks are in error.txt


def test_sweep_summary_marks_jobs_with_an_error_failed_even_with_old_metrics(tmp_path):
    """A job re-run into its directory that fails keeps the earlier metrics.json; error.txt decides."""
    metrics = {split: {"mae": mae, "rmse": 1.0, "r2": 0.5} for split, mae in (("val", 0.2), ("test", 0.3))}
    for name, files in {
        "0": {".hydra/overrides.yaml": "- optim.lr=0.1\n", "metrics.json": json.dumps(metrics), "error.txt": "ValueError: no\n"},
        "1": {"metrics.json": json.dumps(metrics)},  # hydra.output_subdir=null: no .hydra folder
        "2": {".hydra/overrides.yaml": "- optim.lr=0.3\n"},  # never finished
        "10": {".hydra/overrides.yaml": "- optim.lr=0.4\n", "metrics.json": json.dumps({"test": metrics["test"]})},  # crystal-eval's, no val
        "notes": {"readme.txt": "not a job"},
    }.items():
        for relative, text in files.items():
            (tmp_path / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / relative).write_text(text)
    path, failed, jobs = summarize_sweep(tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (failed, jobs) == (2, 4)
    assert [(Path(row["run_dir"]).name, row["status"], row["val_mae"]) for row in rows] == [
        ("1", "ok", "0.2"), ("10", "ok", ""), ("0", "failed", ""), ("2", "failed", ""),  # failed last; job numbers in number order
    ]
    assert rows[1]["test_mae"] == "0.3"
    assert rows[2]["overrides"] == "optim.lr=0.1"


def test_a_sweep_of_regressions_and_classifiers_keeps_the_scores_of_both(tmp_path):
    """-m data=demo,mp_metal: each task's rows ranked by its own validation score, regressions first, failed jobs last."""
    regression = {split: {"mae": mae, "rmse": 1.0, "r2": 0.5} for split, mae in (("val", 0.2), ("test", 0.3))}
    classifier = {"task": "classification"} | {split: {"log_loss": loss, "accuracy": 0.8, "roc_auc": 0.9} for split, loss in (("val", 0.4), ("test", 0.5))}
    jobs = {"0": {"task": "regression", **regression}, "1": classifier, "2": {**regression, "val": {"mae": 0.1}}, "3": None,
            "4": {**classifier, "val": {"log_loss": 0.3}}}
    for name, metrics in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- job={name}\n")
        if metrics is not None:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    path, failed, _ = summarize_sweep(tmp_path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert {"task", "val_mae", "test_mae", "val_log_loss", "test_accuracy"} <= set(reader.fieldnames) and failed == 1
    assert [(row["overrides"], row["task"], row["val_mae"], row["val_log_loss"]) for row in rows] == [
        ("job=2", "regression", "0.1", ""), ("job=0", "regression", "0.2", ""), ("job=4", "classification", "", "0.3"),
        ("job=1", "classification", "", "0.4"), ("job=3", "", "", ""),
    ]
    assert rows[3]["test_accuracy"] == "0.8" and rows[1]["test_mae"] == "0.3"


def test_sweep_summary_finds_jobs_nested_by_the_sweep_subdir_with_their_config_copies_elsewhere(tmp_path):
    """hydra.sweep.subdir=lr_${optim.lr}/${hydra.job.num} hydra.output_subdir=configs."""
    metrics = {split: {"mae": mae, "rmse": 1.0, "r2": 0.5} for split, mae in (("val", 0.2), ("test", 0.3))}
    for job, lr in (("0", "0.1"), ("1", "0.3")):
        (tmp_path / f"lr_{lr}" / job / "configs").mkdir(parents=True)
        (tmp_path / f"lr_{lr}" / job / "configs" / "overrides.yaml").write_text(f"- optim.lr={lr}\n")
        (tmp_path / f"lr_{lr}" / job / "previous-1").mkdir()  # an earlier training moved aside: part of the job, not one
        (tmp_path / f"lr_{lr}" / job / "previous-1" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "lr_0.1" / "0" / "metrics.json").write_text(json.dumps(metrics))
    path, failed, jobs = summarize_sweep(tmp_path, "configs")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (failed, jobs) == (1, 2)
    assert [(row["overrides"], row["status"], row["val_mae"]) for row in rows] == [("optim.lr=0.1", "ok", "0.2"), ("optim.lr=0.3", "failed", "")]


def test_sweep_summary_leaves_out_the_jobs_of_an_earlier_sweep_into_the_same_folder(tmp_path):
    """hydra.sweep.dir=sweeps/lr reused: its job 2 of an earlier, longer sweep (which failed) is neither listed nor counted."""
    metrics = {split: {"mae": 0.2, "rmse": 1.0, "r2": 0.5} for split in ("val", "test")}
    for job, files in {"0": {"metrics.json": json.dumps(metrics)}, "1": {"metrics.json": json.dumps(metrics)}, "2": {"error.txt": "ValueError"}}.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        for name, text in files.items():
            (tmp_path / job / name).write_text(text)
    an_hour_ago = time.time() - 3600
    for path in (tmp_path / "2").rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    path, failed, jobs = summarize_sweep(tmp_path, since=time.time() - 60)
    with open(path, newline="") as handle:
        assert [row["overrides"] for row in csv.DictReader(handle)] == ["seed=0", "seed=1"]
    assert (failed, jobs) == (0, 2)
    assert summarize_sweep(tmp_path)[1:] == (1, 3)  # without a start time every job folder counts


# ----- 5. torchrun ----------------------------------------------------------------------------


TWO_RANKS = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable")


def _torchrun_settings(tmp_path: Path) -> list[str]:
    """A tiny demo training for two CPU ranks, its learning rate scaled to their global batch."""
    return [
        "data=demo", "data.num_crystals=100", "model.n_conv=1", *QUIET_CPU, "seed=1", "trainer.lr_scaling=linear",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def _torchrun_two_ranks(settings: list[str], run_dir: Path, cwd: Path) -> None:
    """Train with torchrun on two CPU ranks (gloo) into run_dir; fail the test with the output's end if it fails."""
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "crystal_train.train", *settings, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.mark.slow
@TWO_RANKS
def test_torchrun_two_cpu_ranks_write_one_consistent_run(tmp_path):
    run_dir = tmp_path / "run"
    settings = _torchrun_settings(tmp_path)
    _torchrun_two_ranks([*settings, "trainer.max_epochs=2", "trainer.max_minutes=600"], run_dir, tmp_path)  # its ranks agree each epoch

    metrics = _metrics(run_dir)
    assert metrics["epochs"] == 2
    history = _history(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert not (tmp_path / "outputs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    # Validation is sharded over both ranks; rank 0 alone re-scores best.pt for metrics.json.
    # They agree only if every rank validated with rank 0's BatchNorm running statistics (with
    # each rank's own statistics the two differed by about 2e-5 here; float noise is about 1e-9).
    best = history[metrics["best_epoch"] - 1]
    assert float(best["val_mae"]) == pytest.approx(metrics["val"]["mae"], rel=0, abs=1e-7)
    assert metrics["val"]["n"] == len(json.loads((run_dir / "split.json").read_text())["val"])
    # Its learning rate was scaled to the global batch of two ranks: one process may not continue it.
    with pytest.raises(ResumeConfigError, match=r"on 1 rank\(s\): it trained on 2"):
        train(compose_config("train", [*settings, "trainer.max_epochs=3"]), run_dir)


@pytest.mark.slow
@TWO_RANKS
def test_torchrun_compiled_ranks_train_as_the_eager_ranks(tmp_path):
    """trainer.compile=true under torchrun compiles the DDP-wrapped model and still averages the gradients.

    The second epoch starts from weights updated with both ranks' gradients, so its loss matches the
    eager run's only if the compiled backward kept DDP's all-reduce (each rank's own gradients
    alone gave a different model). Compiled and eager kernels differ only by float rounding, which
    the training columns show as such. Validation and test differ more (here up to 0.1 %): the bias
    of the linear layer before each BatchNorm has a gradient that is zero up to rounding, Adam turns
    that rounding into full-sized steps, and the running means the evaluation uses lag behind them.
    """
    settings = [*_torchrun_settings(tmp_path), "trainer.max_epochs=2"]
    _torchrun_two_ranks([*settings, "trainer.compile=false"], tmp_path / "eager", tmp_path)
    _torchrun_two_ranks([*settings, "trainer.compile=true"], tmp_path / "compiled", tmp_path)

    eager, compiled = _history(tmp_path / "eager"), _history(tmp_path / "compiled")
    assert [row["epoch"] for row in compiled] == [row["epoch"] for row in eager] == ["1", "2"]
    for column, tolerance in (("train_loss", 1e-5), ("train_mae", 1e-5), ("val_mae", 5e-3)):
        assert [float(row[column]) for row in compiled] == pytest.approx([float(row[column]) for row in eager], rel=tolerance)
    assert _metrics(tmp_path / "compiled")["test"]["mae"] == pytest.approx(_metrics(tmp_path / "eager")["test"]["mae"], rel=5e-3)


# ----- 6. small units -------------------------------------------------------------------------


def test_torchrun_arguments_single_process_adds_nothing():
    assert torchrun_arguments(["data=demo"], {}) == []
    assert torchrun_arguments(["data=demo"], {"WORLD_SIZE": "1", "RANK": "0", "TORCHELASTIC_RUN_ID": "x"}) == []


def test_torchrun_arguments_share_one_run_dir_and_quiet_other_ranks():
    launch = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc"}
    rank0 = torchrun_arguments(["data=demo"], {**launch, "RANK": "0"})
    rank1 = torchrun_arguments(["data=demo"], {**launch, "RANK": "1"})
    dirs0 = [a for a in rank0 if a.startswith("hydra.run.dir=")]
    dirs1 = [a for a in rank1 if a.startswith("hydra.run.dir=")]
    assert len(dirs0) == 1 and dirs0 == dirs1
    assert "abc" in dirs0[0]
    assert "hydra.output_subdir=null" in rank1 and "hydra.output_subdir=null" not in rank0
    other = torchrun_arguments(["data=demo"], {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "other", "RANK": "0"})
    assert [a for a in other if a.startswith("hydra.run.dir=")] != dirs0
    # A run directory given on the command line is kept.
    for given_dir in ("hydra.run.dir=/tmp/mine", "++hydra.run.dir=/tmp/mine"):
        given = torchrun_arguments([given_dir], {**launch, "RANK": "1"})
        assert not any(a.startswith("hydra.run.dir=") for a in given) and "hydra.output_subdir=null" in given


def test_each_job_of_a_sweep_gets_its_own_deterministic_setting():
    """Hydra runs a sweep's jobs in one process: one job's trainer.deterministic=true must not carry over to the next."""
    try:
        loop.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        loop.seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def _train_lrs(cfg, run_dir: Path) -> list[float]:
    run_dir.mkdir()
    train(cfg, run_dir)
    return [float(row["lr"]) for row in _history(run_dir)]


@pytest.mark.slow
def test_warmup_raises_the_lr_linearly_then_holds_it(small_cfg, tmp_path):
    cfg = small_cfg("scheduler=none", "trainer.warmup_epochs=2", "trainer.max_epochs=4", "optim.lr=0.004")
    data = prepare_data(cfg.data, graph_settings(cfg.graph))
    steps = math.ceil(len(data.splits["train"]) / int(cfg.trainer.batch_size))
    lrs = _train_lrs(cfg, tmp_path / "run")
    # history's lr is the lr of each epoch's first step: warm-up step s (0-based) uses lr*(s+1)/(2*steps).
    assert lrs == pytest.approx([0.004 * 1 / (2 * steps), 0.004 * (steps + 1) / (2 * steps), 0.004, 0.004], rel=1e-9)
    assert lrs[0] < lrs[1] < lrs[2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["scheduler=cosine"], lambda lr: [lr, 1e-6 + (lr - 1e-6) * (1 + math.cos(math.pi / 2)) / 2]),
        (["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"], lambda lr: [lr, lr / 2]),
    ],
    ids=["cosine", "step"],
)
def test_schedulers_compose_and_set_the_lr(small_cfg, tmp_path, overrides, expected):
    cfg = small_cfg(*overrides, "trainer.max_epochs=2", "optim.lr=0.002")
    assert cfg.scheduler._target_.startswith("torch.optim.lr_scheduler.")
    lrs = _train_lrs(cfg, tmp_path / "run")
    assert lrs == pytest.approx(expected(0.002), rel=1e-9)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["scheduler_state"]["last_epoch"] == 2


@pytest.mark.slow
def test_plateau_scheduler_halves_the_lr_after_an_epoch_without_improvement(small_cfg, tmp_path):
    """An absolute threshold of 1000 makes every epoch after the first one without improvement; patience 0 acts at once."""
    cfg = small_cfg("scheduler.patience=0", "+scheduler.threshold=1000", "+scheduler.threshold_mode=abs", "trainer.max_epochs=3", "optim.lr=0.002")
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert _train_lrs(cfg, tmp_path / "run") == pytest.approx([0.002, 0.002, 0.001], rel=1e-9)


@pytest.mark.slow
def test_l1_loss_is_the_normalised_mae_and_mse_is_not(small_cfg, tmp_path):
    """trainer.loss=l1 trains on mean |error| of the normalised targets: train_loss × std is the train MAE."""
    for loss in ("l1", "mse"):
        run_dir = tmp_path / loss
        train(small_cfg(f"trainer.loss={loss}", "trainer.max_epochs=2"), run_dir)
        std = load_checkpoint(run_dir / "checkpoints" / "last.pt")["normalizer"]["std"]
        ratios = [float(row["train_loss"]) * std / float(row["train_mae"]) for row in _history(run_dir)]
        assert (ratios == pytest.approx([1.0, 1.0], rel=1e-4)) is (loss == "l1"), (loss, ratios)


@pytest.mark.slow
def test_gradient_clipping_bounds_the_norm_of_every_step(small_cfg, tmp_path, monkeypatch):
    norms = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    train(small_cfg("optim=sgd", "trainer.max_epochs=1"), tmp_path / "free")
    free = list(norms)
    norms.clear()
    train(small_cfg("optim=sgd", "trainer.max_epochs=1", "trainer.grad_clip=0.01"), tmp_path / "clipped")
    assert min(free) > 0.01 and len(norms) == len(free)
    assert max(norms) <= 0.01 * (1 + 1e-5) and min(norms) >= 0.01 * (1 - 1e-3)


@pytest.mark.slow
def test_linear_lr_scaling_sets_the_lr_the_scheduler_starts_from(small_cfg, tmp_path):
    # batch 16 against a reference of 4: the cosine schedule runs from 4 × optim.lr.
    cfg = small_cfg("scheduler=cosine", "trainer.max_epochs=2", "optim.lr=0.001", "trainer.lr_scaling=linear", "trainer.lr_reference_batch_size=4")
    lrs = _train_lrs(cfg, tmp_path / "run")
    assert lrs == pytest.approx([0.004, 1e-6 + (0.004 - 1e-6) / 2], rel=1e-9)


@pytest.mark.parametrize(
    "name, cls, settings",
    [
        ("adamw", torch.optim.AdamW, {"lr": 0.001, "weight_decay": 0.01}),
        ("sgd", torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    ],
)
def test_optimizer_configs_instantiate(compose_train_cfg, tmp_path, name, cls, settings):
    cfg = compose_train_cfg([f"optim={name}"], tmp_path)
    parameters = [torch.nn.Parameter(torch.ones(3))]
    optimizer = hydra.utils.instantiate(cfg.optim)(parameters)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in settings} == settings
    assert group["params"] == parameters


@pytest.mark.slow
def test_bf16_run_is_scored_in_the_precision_it_was_selected_in(small_cfg, tmp_path):
    """With trainer.precision=bf16 the reported val MAE is the one early stopping saw."""
    run_dir = tmp_path / "run"
    best_val = train(small_cfg("trainer.max_epochs=2", "trainer.precision=bf16"), run_dir)
    metrics = _metrics(run_dir)
    assert metrics["val"]["mae"] == pytest.approx(best_val, abs=1e-6)
    eval_cfg = compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"output={tmp_path / 'eval'}", "device=cpu", "split=all"])
    report = evaluate(eval_cfg)
    assert report["test"]["mae"] == pytest.approx(metrics["test"]["mae"], abs=1e-6)


@pytest.mark.slow
def test_weight_average_is_validated_saved_scored_and_resumed(small_cfg, tmp_path):
    """With trainer.ema_decay the averaged weights are what validation sees, best.pt holds and the scores use;
    a run stopped and resumed continues the average to the uninterrupted result."""
    # A decay of 0.9 keeps the early-update ramp ((1 + t) / (10 + t)) in play over 4 epochs of 6 steps.
    ema = ("trainer.ema_decay=0.9", "trainer.deterministic=true", "trainer.patience=100")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    best_val = train(small_cfg(*ema, "trainer.max_epochs=4"), straight)
    train(small_cfg(*ema, "trainer.max_epochs=2"), stopped)
    train(small_cfg(*ema, "trainer.max_epochs=4"), stopped)
    _assert_same_history(_history(stopped), _history(straight))

    best = load_checkpoint(straight / "checkpoints" / "best.pt")
    resumed_best = load_checkpoint(stopped / "checkpoints" / "best.pt")
    for key, weights in best["model_state"].items():
        assert torch.equal(weights, resumed_best["model_state"][key]), key
    trained, averaged = best["training_model_state"]["convs.0.fc_full.weight"], best["model_state"]["convs.0.fc_full.weight"]
    assert not torch.allclose(trained, averaged)

    metrics = _metrics(straight)
    assert metrics["val"]["mae"] == pytest.approx(best_val, abs=1e-6)
    eval_cfg = compose_config("eval", [f"ckpt={straight / 'checkpoints' / 'best.pt'}", f"output={tmp_path / 'eval'}", "device=cpu", "split=all"])
    assert evaluate(eval_cfg)["val"]["mae"] == pytest.approx(best_val, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_setting_covers_the_graph_build_and_the_epochs(small_cfg, tmp_path, capsys, progress):
    cfg = small_cfg("trainer.max_epochs=1", f"trainer.progress_bar={progress}", f"data.cache_dir={tmp_path / 'cold_cache'}")
    train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert ("graphs:" in err) is progress
    assert ("epoch 1:" in err) is progress


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("trainer.loss=mae", "trainer.loss must be one of mse, l1, huber, not 'mae'"),
        ("trainer.lr_scaling=sqrt-root", "trainer.lr_scaling must be one of none, linear, sqrt, not 'sqrt-root'"),
        ("trainer.precision=16", "trainer.precision must be one of 32, tf32, bf16, not '16'"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be at least 1, not 0"),
        ("trainer.patience=0", "trainer.patience must be at least 1, not 0"),
        ("trainer.batch_size=0", "trainer.batch_size must be at least 1, not 0"),
        ("trainer.eval_batch_size=-1", "trainer.eval_batch_size must be at least 1, not -1"),
        ("+trainer.max_epoch=2", "unknown setting trainer.max_epoch \\(did you mean trainer.max_epochs\\?\\); the trainer settings are: batch_size, "),
        ("+data.limt=5", "unknown setting data.limt \\(did you mean data.limit\\?\\)"),
        ("+data.split.fraction=[0.5,0.25,0.25]", "unknown setting data.split.fraction \\(did you mean data.split.fractions\\?\\)"),
        ("+graph.max_neighbours=8", "unknown setting graph.max_neighbours \\(did you mean graph.max_neighbors\\?\\)"),
        ("+sed=1", "unknown setting sed \\(did you mean seed\\?\\); the top-level settings are: data, "),
        ("+logger.tensorbord=true", "unknown setting logger.tensorbord \\(did you mean logger.tensorboard\\?\\)"),
        ("trainer.max_epochs=two", "trainer.max_epochs='two': expected a whole number"),
        ("data.limit=abc", "data.limit='abc': expected a whole number"),
        ("data.seed=null", "data.seed=None: expected a whole number"),
        ("trainer.device=gpu", "trainer.device=gpu is no device: use auto, cpu, cuda or cuda:N"),
        ("trainer.graphs_on_device=bogus", "trainer.graphs_on_device must be auto, true or false, not 'bogus'"),
        ("trainer.lr_reference_batch_size=0", "trainer.lr_reference_batch_size must be at least 1, not 0"),
        ("trainer.ema_decay=1", "trainer.ema_decay must be null \\(off\\) or lie strictly between 0 and 1, such as 0.999; not 1"),
        ("trainer.grad_clip=-1", "trainer.grad_clip must be a positive gradient norm, or null for none, not -1"),  # ascent, not clipping
        ("trainer.grad_clip=0", "trainer.grad_clip must be a positive gradient norm, or null for none, not 0"),
        ("trainer.grad_clip=big", "trainer.grad_clip must be a positive gradient norm, or null for none, not 'big'"),
        ("trainer.warmup_epochs=0.5", "trainer.warmup_epochs=0.5: expected a whole number"),
        ("data.split.folds=5 data.split.fold=7", "data.split.fold must be one of 0 .. 4 for data.split.folds=5, not 7"),
        ("data.split.fold=2", "data.split.fold=2 picks a part of a K-fold split: give data.split.folds=K too"),
        ("trainer.max_minutes=0", "trainer.max_minutes must be a positive number of minutes, or null for no limit, not 0"),
        ("trainer.max_minutes=soon", "trainer.max_minutes must be a positive number of minutes, or null for no limit, not 'soon'"),
        ("trainer.warmup_epochs=-2", "trainer.warmup_epochs must be 0 \\(none\\) or more, not -2"),
    ],
)
def test_unknown_trainer_option_is_refused_before_any_data_are_read(setting, message, tmp_path):
    cfg = compose_config("train", [*SMALL, *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", *setting.split()])
    with pytest.raises(ValueError, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()


def test_a_device_that_is_no_device_is_named_with_the_setting_that_gave_it():
    from crystal_train.training.inference import resolve_device

    assert resolve_device("cpu", "device") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device=gpu is no device: use auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu", "device")


def test_whole_number_settings_take_a_whole_float_as_its_int_and_quoted_booleans_as_booleans():
    from crystal_train.training.config_checks import check_data_numbers, graphs_on_device

    data = OmegaConf.create({"seed": 3.0, "limit": 50.0, "num_crystals": 120})
    check_data_numbers(data)
    assert (data.seed, data.limit) == (3, 50) and isinstance(data.limit, int)
    assert [graphs_on_device(value) for value in (True, "true", "False", "auto")] == [True, True, False, None]


def test_crystal_eval_warns_when_the_training_targets_changed_since_training(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    tiny = ["data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=1", "trainer.batch_size=2", "model.atom_fea_len=8", "model.n_conv=1", "seed=0"]
    snapshot = write_csv(good_rows)
    train(compose_train_cfg([f"data.snapshot={snapshot}", *tiny], tmp_path), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    scoring = ["device=cpu", f"output={tmp_path / 'eval'}"]
    with caplog.at_level(logging.WARNING):
        evaluate(compose_config("eval", [f"ckpt={ckpt}", *scoring]))
    assert "targets read now are not those" not in caplog.text
    older = load_checkpoint(ckpt)
    del older["normalizer"]["minimum"]  # as written before data.target_min existed
    save_checkpoint(tmp_path / "older.pt", **older)
    evaluate(compose_config("eval", [f"ckpt={tmp_path / 'older.pt'}", "device=cpu", f"output={tmp_path / 'eval_older'}"]))
    assert "targets read now are not those" not in caplog.text
    trained_on = load_checkpoint(ckpt)["split_ids"]["train"][0]
    for row in good_rows:
        row["formation_energy_per_atom"] += 0.5 if row["material_id"] == trained_on else 0.0
    write_csv(good_rows)  # the snapshot edited in place
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate(compose_config("eval", [f"ckpt={ckpt}", *scoring]))
    assert f"The training split's targets read now are not those {ckpt} trained on (mean " in caplog.text


def test_crystal_eval_scores_another_sources_own_test_rows_whatever_the_training_split_kind(compose_train_cfg, write_csv, good_rows, tmp_path):
    tiny = ["data.split.kind=composition", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=1", "trainer.batch_size=2",
            "model.atom_fea_len=8", "model.n_conv=1", "seed=0"]
    train(compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", *tiny], tmp_path), tmp_path / "run")
    other = [dict(row, split=split) for row, split in zip(good_rows[1:], ["train", "test", "val", "test"])]  # not every trained crystal
    report = evaluate(compose_config("eval", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", f"data.snapshot={write_csv(other, 'other.csv')}",
                                              "split=test", "device=cpu", f"output={tmp_path / 'eval'}"]))
    with open(tmp_path / "eval" / "predictions_test.csv", newline="") as handle:
        scored = [row["id"] for row in csv.DictReader(handle)]
    assert report["test"]["n"] == 2 and sorted(scored) == sorted(row["material_id"] for row in other if row["split"] == "test")


def test_crystal_eval_finds_another_sources_ids_itself_not_by_the_training_sources_id_column(compose_train_cfg, write_csv, good_rows, tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    from conftest import good_structures

    tiny = ["data.id_column=material_id", "data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=1", "trainer.batch_size=2",
            "model.atom_fea_len=8", "model.n_conv=1", "seed=0"]
    train(compose_train_cfg([f"data.snapshot={write_csv(good_rows)}", *tiny], tmp_path), tmp_path / "run")
    frames = []
    for row, structure in zip(good_rows, good_structures().values()):
        frames.append(AseAtomsAdaptor.get_atoms(structure))
        frames[-1].info["formation_energy_per_atom"] = row["formation_energy_per_atom"]  # no material_id key
    write(tmp_path / "other.extxyz", frames, format="extxyz")
    report = evaluate(compose_config("eval", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", f"data.snapshot={tmp_path / 'other.extxyz'}",
                                              "device=cpu", f"output={tmp_path / 'eval'}"]))
    with open(tmp_path / "eval" / "predictions_source.csv", newline="") as handle:
        assert sorted(row["id"] for row in csv.DictReader(handle)) == [f"other#{i}" for i in range(len(frames))]
    assert report["source"]["n"] == len(frames)


def test_max_minutes_stops_a_launch_with_its_results_and_the_same_command_goes_on(compose_train_cfg, write_csv, good_rows, tmp_path, caplog):
    tiny = ["data.split.fractions=[0.6,0.2,0.2]", "trainer.max_epochs=3", "trainer.batch_size=2", "model.atom_fea_len=8", "model.n_conv=1", "seed=0"]
    snapshot = write_csv(good_rows)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        train(compose_train_cfg([f"data.snapshot={snapshot}", *tiny, "trainer.max_minutes=0.0001"], tmp_path), run_dir)  # 6 ms
    assert "Time limit: stopped after epoch 1 of 3, since another would end past trainer.max_minutes=0.0001" in caplog.text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1 and metrics["test"]["n"] > 0  # scored as a finished run
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(compose_train_cfg([f"data.snapshot={snapshot}", *tiny, "trainer.max_minutes=60"], tmp_path), run_dir)  # a changed limit resumes
    assert "Resumed from" in caplog.text and "Time limit" not in caplog.text
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2, 3] and json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3


def test_a_sweep_over_folds_logs_the_cross_validated_test_score(tmp_path, caplog):
    maes = {0: 0.30, 1: 0.32, 2: 0.37}
    for fold, mae in maes.items():
        for lr in ("0.001", "0.01"):
            job = tmp_path / f"{fold}_{lr}"
            (job / ".hydra").mkdir(parents=True)
            (job / ".hydra" / "overrides.yaml").write_text(f"- data.split.folds=3\n- data.split.fold={fold}\n- optim.lr={lr}\n")
            scores = {split: {"mae": mae * (2 if lr == "0.01" else 1), "rmse": 1.0, "r2": 0.5} for split in ("val", "test")}
            (job / "metrics.json").write_text(json.dumps(scores))
    with caplog.at_level(logging.INFO):
        summarize_sweep(tmp_path)
    mean, std = np.mean(list(maes.values())), np.std(list(maes.values()), ddof=1)
    assert f"Cross-validation of data.split.folds=3 optim.lr=0.001: test MAE {mean:.4g} ± {std:.2g}, the mean and sample standard deviation over 3 folds" in caplog.text
    assert f"Cross-validation of data.split.folds=3 optim.lr=0.01: test MAE {2 * mean:.4g} ± {2 * std:.2g}" in caplog.text


def test_a_run_on_one_fold_tests_that_fold(tmp_path):
    splits = {}
    for fold in (0, 1):
        cfg = compose_config("train", [*SMALL, *QUIET_CPU, f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
                                       "data.split.folds=4", f"data.split.fold={fold}"])
        train(cfg, tmp_path / f"fold{fold}")
        splits[fold] = json.loads((tmp_path / f"fold{fold}" / "split.json").read_text())
    assert [len(splits[0][name]) for name in ("train", "val", "test")] == [78, 12, 30]  # 120 crystals: a quarter tested, val 10 %
    assert not set(splits[0]["test"]) & set(splits[1]["test"])
    assert set(splits[1]["test"]) <= set(splits[0]["train"]) | set(splits[0]["val"])


def test_a_checkpoint_from_before_the_target_floor_resumes_on_unchanged_targets(tmp_path):
    from crystal_train.training.resume import check_same_data

    ids = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    older = {"split_ids": ids, "normalizer": {"mean": 0.5, "std": 2.0}}  # saved before data.target_min: no minimum
    check_same_data(older, ids, {"mean": 0.5, "std": 2.0, "minimum": None}, tmp_path / "last.pt")
    with pytest.raises(ResumeConfigError, match=r"the training targets changed \(mean 0.5 -> 0.6, std 2 -> 2\)"):
        check_same_data(older, ids, {"mean": 0.6, "std": 2.0, "minimum": None}, tmp_path / "last.pt")
