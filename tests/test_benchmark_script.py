"""scripts/benchmark.py runs end to end on the built-in demo data and reports what the issue asks for."""

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch_geometric

from conftest import cif_text, good_structures

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
GPU_SCRIPT = SCRIPT.with_name("gpu_benchmarks.sh")


@pytest.mark.slow
def test_benchmark_reports_throughput_memory_and_baseline_ratio(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--limit", "120", "--models", "cgcnn", "--device", "cpu", "--precisions", "32,bf16",
         "--warmup-batches", "1", "--batch-size", "16", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    report = json.loads(completed.stdout)

    graphs = report["graphs"]["cgcnn"]
    assert graphs["crystals"] == 120
    assert graphs["graph"] == {"cutoff": 8.0, "max_neighbors": 12}
    assert graphs["cached_prepare_s"] < graphs["first_prepare_s"]
    assert graphs["resident_on_device"] is True
    # Batch formation alone, over the whole training split (the demo splits 80/10/10), for both paths.
    batching = graphs["batching"]
    assert batching["crystals"] == 96
    assert batching["ours_crystals_per_s"] > 0 and batching["baseline_pyg_dataloader_crystals_per_s"] > 0
    assert batching["ratio"] == pytest.approx(batching["ours_crystals_per_s"] / batching["baseline_pyg_dataloader_crystals_per_s"])
    assert report["warmup_batches"] == 1
    assert report["baseline"] == {"loader": "torch_geometric.loader.DataLoader", "num_workers": 0, "pin_memory": False, "model": "uncompiled"}
    assert report["torch"] == torch.__version__
    assert report["malloc_keeps_freed_memory"] is (platform.libc_ver()[0] == "glibc")  # as crystal-train runs
    assert report["versions"]["cuda"] == torch.version.cuda and report["versions"]["torch_geometric"] == torch_geometric.__version__
    assert graphs["first_prepare_peak_host_memory_gib"] > 0
    cpuinfo = Path("/proc/cpuinfo")
    cpu_names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.exists() else []
    assert report["device"].startswith("cpu (") and all(name in report["device"] for name in cpu_names[:1])

    # Every setting, bf16 too, is measured beside the baseline at its own precision, with its own peak host memory.
    assert [(run["model"], run["precision"], run["compile"]) for run in report["runs"]] == [("cgcnn", "32", False), ("cgcnn", "bf16", False)]
    for run in report["runs"]:
        # The timed epoch covers the whole training split (the demo splits 80/10/10), not the warm-up's one batch.
        crystals_timed = run["train_crystals_per_s"] * run["train_epoch_s"]
        assert crystals_timed == pytest.approx(96, abs=1e-6)
        assert run["inference_crystals_per_s"] > 0 and run["peak_host_memory_gib"] > 0
        assert run["compiled_during_timing"] == 0  # an uncompiled setting compiles nothing
        assert run["device_memory_before_gib"] is None and run["peak_device_memory_gib"] is None  # CUDA figures only
        assert run["speedup_vs_baseline"] == pytest.approx(
            run["train_crystals_per_s"] / run["baseline_pyg_dataloader_crystals_per_s"]
        )
    assert report["runs"][0]["baseline_pyg_dataloader_crystals_per_s"] != report["runs"][1]["baseline_pyg_dataloader_crystals_per_s"]


def test_compiled_settings_are_measured_first_for_every_model():
    """A benchmark stopped at its time limit keeps each model's compiled rows, not all of CGCNN's and none of SchNet's."""
    order = _load_benchmark_module().measurement_order(["cgcnn", "schnet"], ["32", "bf16"], [False, True])
    assert order[:4] == [("cgcnn", "32", True), ("schnet", "32", True), ("cgcnn", "bf16", True), ("schnet", "bf16", True)]
    assert sorted(order) == sorted((m, p, c) for m in ("cgcnn", "schnet") for p in ("32", "bf16") for c in (False, True))


def test_warm_up_runs_the_first_batches_and_the_last_smaller_one_a_compiler_must_also_see():
    warmup_batches = _load_benchmark_module().warmup_batches
    assert list(warmup_batches(iter(range(10)), 3)) == [0, 1, 2, 9]
    assert list(warmup_batches(iter(range(3)), 5)) == [0, 1, 2]
    assert list(warmup_batches(iter(range(4)), None)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_help_documents_every_flag_and_shows_the_example_as_written():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--snapshot", "--limit", "--device", "--models", "--precisions", "--compile", "--batch-size", "--no-baseline"):
        assert flag in completed.stdout
    # The example keeps its line continuation, so it can be pasted as shown.
    assert "mp2018_megnet_with_structures.csv.xz \\\n        --limit 2000 --device cpu" in completed.stdout
    refused = subprocess.run([sys.executable, str(SCRIPT), "--precisions", "32,fp16"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--precisions: fp16 not among 32, tf32, bf16" in refused.stderr


@pytest.mark.slow
def test_graph_benchmark_reports_a_failing_phase_instead_of_waiting_forever(tmp_path):
    """The measuring child dies on a source without the target column; the parent must notice."""
    snapshot = tmp_path / "no_target.csv"
    snapshot.write_text("material_id,cif\nmp-1,data_x\n")
    script = SCRIPT.with_name("benchmark_graphs.py")
    completed = subprocess.run(
        [sys.executable, str(script), "--snapshot", str(snapshot), "--workers", "1", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert completed.returncode == 1
    assert "error: cold phase failed with exit code 1 before reporting" in completed.stderr
    assert "target column 'formation_energy_per_atom' not found" in completed.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary cache directory is removed


@pytest.mark.slow
def test_gpu_benchmark_script_measures_both_steps_and_keeps_a_training_run_stopped_at_its_budget(tmp_path):
    """scripts/gpu_benchmarks.sh smoke-run on the CPU: the benchmark JSON, then training cut off by TRAIN_SECONDS.

    An earlier run's metrics.json in the output folder must not survive beside the new, unfinished history.
    """
    rows = [
        {"material_id": f"{item_id}-{scale}", "formation_energy_per_atom": -0.1 * n - scale, "cif": cif_text(structure.copy().scale_lattice(structure.volume * (1 + scale))),
         "split": ("train", "train", "val", "test")[k % 4]}
        for k, (scale, (n, (item_id, structure))) in enumerate(
            (scale, item) for scale in (0.0, 0.02, 0.04, 0.06) for item in enumerate(good_structures().items())
        )
    ]
    snapshot = tmp_path / "snapshot.csv"
    pd.DataFrame(rows).to_csv(snapshot, index=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(scratch),
        "DEVICE": "cpu", "TRAIN_SECONDS": "40", "BUDGET_SECONDS": "100000", "CACHE_DIR": str(tmp_path / "cache"),
        "BENCHMARK_ARGS": "--models cgcnn --precisions 32 --compile off --warmup-batches 1 --batch-size 4 --eval-batch-size 4",
        # Early stopping would end this tiny run well inside the budget; the budget must end it instead.
        "TRAIN_OVERRIDES": "trainer.compile=false trainer.precision=32 trainer.batch_size=4 trainer.patience=100000 "
                           "trainer.max_epochs=100000 model.atom_fea_len=8 model.n_conv=1 model.h_fea_len=8 model.n_h=1",
    }
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    completed = subprocess.run(["bash", str(GPU_SCRIPT), str(snapshot), str(out)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    report = json.loads((out / "benchmark.json").read_text())
    assert report["graphs"]["cgcnn"]["crystals"] == 20
    (run,) = report["runs"]
    assert run["train_crystals_per_s"] > 0 and run["speedup_vs_baseline"] > 0
    train_log = (out / "train.log").read_text()
    assert "training for at most 40 s" in train_log  # a budget far larger leaves TRAIN_SECONDS as it is
    assert "training exit status 124 (stopped at the time budget)" in train_log
    epochs = pd.read_csv(out / "history.csv")
    assert len(epochs) >= 1 and epochs["val_mae"].notna().all()
    assert "trainer:" in (out / "config.yaml").read_text() and not (out / "metrics.json").exists()
    assert sorted(path.name for path in out.iterdir()) == ["benchmark.json", "benchmark.log", "config.yaml", "history.csv", "train.log"]
    # The script's mktemp folder (run directory, checkpoints) is gone; torch may leave its compiler cache.
    assert [path.name for path in scratch.iterdir() if path.name.startswith("tmp.")] == []


FAKE_PYTHON = """#!/usr/bin/env bash
# benchmark.py succeeds at once; the training ends at once, is killed by the kernel at once (as out of
# memory), or ignores SIGINT until timeout kills it after its grace period
[[ $1 == scripts/benchmark.py || $FAKE_TRAINING == ends ]] && exit 0
[[ $FAKE_TRAINING == dies ]] && kill -KILL $$
trap '' INT
while :; do sleep 1; done
"""


@pytest.mark.slow
def test_gpu_script_counts_a_kill_after_the_time_limit_as_stopped_and_one_before_it_as_a_failure(tmp_path):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "TRAIN_SECONDS": "2", "DEVICE": "cpu"}
    logs = {}
    for behaviour in ("dies", "outlives_sigint"):
        out = tmp_path / behaviour
        completed = subprocess.run(["bash", str(GPU_SCRIPT), str(tmp_path), str(out)], env={**env, "FAKE_TRAINING": behaviour},
                                   capture_output=True, text=True)
        logs[behaviour] = (completed.returncode, (out / "train.log").read_text())
    assert logs["dies"][0] == 137 and "training exit status 137\n" in logs["dies"][1]
    assert logs["outlives_sigint"][0] == 0 and "training exit status 137 (stopped at the time budget)" in logs["outlives_sigint"][1]


def test_gpu_script_leaves_the_training_240_seconds_after_a_benchmark_that_used_all_of_its_time(tmp_path):
    """At the smallest budget, 330 s: the benchmark may run 30 s and 15 s past SIGINT, the training 240 s, ending 45 s early."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "DEVICE": "cpu", "BUDGET_SECONDS": "330", "FAKE_TRAINING": "ends"}
    out = tmp_path / "out"
    completed = subprocess.run(["bash", str(GPU_SCRIPT), str(tmp_path), str(out)], env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "for at most 30 s" in (out / "benchmark.log").read_text()
    assert re.search(r"training for at most 28[45] s", (out / "train.log").read_text())  # 330 - 45, less the second or so spent


def _load_benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("crystals", "batch_size", "sizes"), [(5, 2, [2, 2]), (6, 4, [4, 2]), (4, 2, [2, 2]), (1, 2, [1]), (2, 1, [1, 1])])
def test_the_baseline_never_trains_on_a_lone_last_crystal(crystals, batch_size, sizes):
    """One one-atom crystal alone would crash CGCNN's BatchNorm in the baseline: a lone last crystal after other
    batches is left out (a one-crystal split is kept: there is nothing else to time)."""
    store = SimpleNamespace(
        node_ptr=np.arange(crystals + 1), edge_ptr=np.arange(crystals + 1), numbers=np.full(crystals, 3, dtype=np.int16),
        edge_index=np.zeros((2, crystals), dtype=np.int32), distances=np.full(crystals, 3.0, dtype=np.float32),
        edge_weights=lambda: np.ones(crystals, dtype=np.float32),
        targets=np.zeros(crystals),
    )
    batches = _load_benchmark_module().pyg_batches(store, np.arange(crystals), batch_size, torch.device("cpu"), shuffle=True)
    assert [batch.num_graphs for batch in batches()] == sizes


@pytest.mark.slow
def test_a_failing_setting_is_reported_and_the_others_are_kept(tmp_path, monkeypatch, capsys):
    """One setting that raises (as an out-of-memory or a compile error would) costs only its own measurement."""
    module = _load_benchmark_module()
    real_measure = module.measure

    output = tmp_path / "benchmark.json"

    def measure(cfg, model_name, data, args, device, precision, compiled, graphs, baseline, publish):
        assert json.loads(output.read_text())["graphs"]["cgcnn"]["batching"]["ours_crystals_per_s"] > 0  # saved before any setting
        if precision == "bf16":
            raise RuntimeError("CUDA out of memory (simulated)")
        real_measure(cfg, model_name, data, args, device, precision, compiled, graphs, baseline, publish)

    monkeypatch.setattr(module, "measure", measure)
    argv = ["--limit", "60", "--models", "cgcnn", "--device", "cpu", "--precisions", "bf16,32", "--warmup-batches", "1",
            "--batch-size", "16", "--no-baseline", "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    with pytest.raises(SystemExit, match="1 of 2 measurements failed"):
        module.main(argv)
    failed, measured = json.loads(output.read_text())["runs"]
    assert failed == {"model": "cgcnn", "precision": "bf16", "compile": False, "error": "RuntimeError: CUDA out of memory (simulated)"}
    assert measured["precision"] == "32" and measured["train_crystals_per_s"] > 0
    assert json.loads(capsys.readouterr().out)["runs"] == [failed, measured]


@pytest.mark.slow
def test_a_setting_whose_baseline_fails_keeps_its_own_figures_saved_before_the_baseline_ran(tmp_path, monkeypatch):
    module = _load_benchmark_module()
    output = tmp_path / "benchmark.json"
    real_train_epoch, epochs = module.train_epoch, []

    def train_epoch(model, optimizer, batches, normalizer, device, precision):
        epochs.append(precision)
        if len(epochs) == 3:  # warm-up and timed epoch of the setting done: the baseline's warm-up starts
            saved = json.loads(output.read_text())["runs"]
            assert len(saved) == 1 and saved[0]["train_crystals_per_s"] > 0 and "speedup_vs_baseline" not in saved[0]
            raise RuntimeError("baseline out of memory (simulated)")
        return real_train_epoch(model, optimizer, batches, normalizer, device, precision)

    monkeypatch.setattr(module, "train_epoch", train_epoch)
    argv = ["--limit", "60", "--models", "cgcnn", "--device", "cpu", "--warmup-batches", "1", "--batch-size", "16",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    with pytest.raises(SystemExit, match="1 of 1 measurements failed"):
        module.main(argv)
    (row,) = json.loads(output.read_text())["runs"]
    assert row["baseline_error"] == "RuntimeError: baseline out of memory (simulated)" and "error" not in row
    assert row["train_crystals_per_s"] > 0 and row["inference_crystals_per_s"] > 0 and "speedup_vs_baseline" not in row


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [("TRAIN_SECONDS", "0", "TRAIN_SECONDS must be a positive number of seconds, not '0'"),
     ("BUDGET_SECONDS", "329", "BUDGET_SECONDS must be at least 330"),
     ("BUDGET_SECONDS", "10m", "BUDGET_SECONDS must be at least 330")],
)
def test_gpu_script_refuses_a_time_setting_it_cannot_keep_before_writing_anything(variable, value, message, tmp_path):
    env = {**os.environ, variable: value}
    completed = subprocess.run(["bash", str(GPU_SCRIPT), "snapshot.csv", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert completed.returncode == 2 and message in completed.stderr
    assert not (tmp_path / "out").exists()
