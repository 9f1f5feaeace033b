"""scripts/benchmark.py runs end to end on the built-in demo data and reports what the issue asks for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.mark.slow
def test_benchmark_reports_throughput_memory_and_baseline_ratio(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--limit", "120", "--models", "cgcnn", "--device", "cpu",
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
    assert report["peak_host_memory_gib"] > 0
    cpuinfo = Path("/proc/cpuinfo")
    cpu_names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.exists() else []
    assert report["device"].startswith("cpu (") and all(name in report["device"] for name in cpu_names[:1])

    (run,) = report["runs"]
    assert (run["model"], run["precision"], run["compile"]) == ("cgcnn", "32", False)
    # The timed epoch covers the whole training split (the demo splits 80/10/10), not the warm-up's one batch.
    crystals_timed = run["train_crystals_per_s"] * run["train_epoch_s"]
    assert crystals_timed == pytest.approx(96, abs=1e-6)
    assert run["inference_crystals_per_s"] > 0
    assert run["speedup_vs_baseline"] == pytest.approx(
        run["train_crystals_per_s"] / run["baseline_pyg_dataloader_crystals_per_s"]
    )


def test_help_documents_every_flag_and_shows_the_example_as_written():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--snapshot", "--limit", "--device", "--models", "--precisions", "--compile", "--batch-size", "--no-baseline"):
        assert flag in completed.stdout
    # The example keeps its line continuation, so it can be pasted as shown.
    assert "mp2018_megnet_with_structures.csv.xz \\\n        --limit 2000 --device cpu" in completed.stdout


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
