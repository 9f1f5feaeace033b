r"""Measure crystal-train's speed on one snapshot and device, and a PyG DataLoader baseline beside it.

Prints one JSON object: graph-cache build and load times, training throughput (crystals/s over
a full epoch after a warm-up, with device synchronisation), inference throughput, peak host
and device memory, for each model × precision × compile setting, plus the same model trained
from a plain torch_geometric DataLoader over a list of Data objects, and the speed-up ratio. The
baseline runs the model uncompiled at each row's precision (measured once per model and
precision). Peak host memory is per setting (its own epochs, before its baseline's) and per graph build
where the kernel can reset it (Linux), else null. The defaults measure float32 uncompiled; --precisions 32,tf32,bf16 --compile both
gives the whole matrix.
It also times batch formation alone (one pass over the training split with no model, batches
moved to the device): the ceiling that the data path puts on training speed, for both paths.
A setting that fails (a compile error, out of memory) is listed with its error, the others still
run, and the exit status is 1.

Example (CPU, 2,000 crystals of the shared MP-2018 CSV):
    python scripts/benchmark.py --snapshot ../shared/datasets/mp2018_megnet/mp2018_megnet_with_structures.csv.xz \
        --limit 2000 --device cpu
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import hydra
import torch
import torch_geometric
from hydra import compose, initialize_config_module
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from crystal_train.data.batch import GraphBatch
from crystal_train.data.dataset import graph_settings, prepare_data
from crystal_train.data.loader import BatchIterator, DeviceGraphs
from crystal_train.host_memory import keep_freed_memory
from crystal_train.training.artifacts import write_json
from crystal_train.training.inference import PRECISIONS, float32_matmul_precision, precision_context, resolve_device
from crystal_train.training.metrics import Normalizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", help="data.snapshot to read (default: the built-in demo dataset)")
    parser.add_argument("--limit", type=int, default=None, help="use a seeded subset of N crystals (data.limit)")
    parser.add_argument("--target", default="formation_energy_per_atom", help="target column")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--models", default="cgcnn,schnet", help="comma-separated model configs")
    parser.add_argument("--precisions", default="32", help="comma-separated: 32, tf32 (TensorFloat-32 matrix products on CUDA), bf16")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off", help="torch.compile settings to measure")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (crystals)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="inference batch size")
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=None,
        help="batches run before each timed epoch, and the epoch's last (smaller) one, a shape compilation must have seen "
        "(default: one full epoch; a few hundred suffice on a large split)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the PyG DataLoader baseline")
    parser.add_argument("--cache-dir", default=None, help="graph cache directory (default: a fresh temporary one, so the build is cold)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the graph build (default: the CPUs this process may use)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for the train config")
    parser.add_argument(
        "--output", default=None, help="also write the JSON to this file, rewritten after every measurement so a crash keeps the rest"
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.precisions.split(",") if p not in PRECISIONS]
    if unknown:
        parser.error(f"--precisions: {', '.join(unknown)} not among {', '.join(PRECISIONS)}")
    return args


def compose_cfg(args, model: str, cache_dir: Path):
    data = ["data=demo"] if args.snapshot is None else ["data=mp_formation", f"data.snapshot={args.snapshot}", f"data.target={args.target}"]
    if args.limit:
        data.append(f"data.limit={args.limit}")
    with initialize_config_module(config_module="crystal_train.configs", version_base="1.3"):
        return compose("train", overrides=[*data, f"model={model}", f"data.cache_dir={cache_dir}", *args.overrides])


def cpu_description() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and torch's thread count."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        name = names[0] if names else name
    return f"cpu ({name}, {torch.get_num_threads()} threads)"


def reset_peak_host_memory() -> bool:
    """Start a new peak of resident memory (Linux's /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_host_memory_gib(since_reset: bool) -> float | None:
    """The process's peak resident memory since the last reset, in GiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if since_reset else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(batches, device, step=None) -> tuple[float, int]:
    """Seconds and crystals for running `step` (nothing: batch formation alone) on each of `batches`.

    The device is synchronised before and after, so queued work is inside the timing.
    """
    synchronize(device)
    start, crystals = time.perf_counter(), 0
    for batch in batches:
        if step is not None:
            step(batch)
        crystals += batch.num_graphs
    synchronize(device)
    return time.perf_counter() - start, crystals


def warmup_batches(batches, count: int | None):
    """The batches of one pass (all with count None), or its first `count` and its last, smaller one: so that compiling
    for the last batch's shape happens before the timed pass, not inside it."""
    if count is None:
        yield from batches
        return
    last = None
    for index, batch in enumerate(batches):
        if index < count:
            yield batch
        else:
            last = batch
    if last is not None:
        yield last


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled so far in this process."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def train_epoch(model, optimizer, batches, normalizer, device, precision: str) -> tuple[float, int]:
    """Seconds and crystals for one training epoch over `batches` (an iterable of GraphBatch)."""

    def train_step(batch):
        with precision_context(device.type, precision):
            output = model(batch)
        loss = torch.nn.functional.mse_loss(output.float(), normalizer.normalize(batch.targets).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    return timed_pass(batches, device, train_step)


@torch.no_grad()
def inference_epoch(model, batches, device, precision: str) -> tuple[float, int]:
    """Seconds and crystals for one inference pass over `batches`."""

    def inference_step(batch):
        with precision_context(device.type, precision):
            model(batch)

    model.eval()
    return timed_pass(batches, device, inference_step)


# How pyg_batches loads, as the JSON records it: what a straightforward PyG training loop does.
BASELINE_SETTINGS = {"loader": "torch_geometric.loader.DataLoader", "num_workers": 0, "pin_memory": False, "model": "uncompiled"}


class Baseline:
    """The PyG DataLoader baseline of one model: its batches, and its training speed at each precision once measured."""

    def __init__(self, batches):
        self.batches = batches
        self.train_crystals_per_s: dict[str, float] = {}


def pyg_batches(store, indices, batch_size: int, device, shuffle: bool):
    """The baseline: a torch_geometric DataLoader over one Data object per crystal."""
    data_list, edge_weights = [], store.edge_weights()
    for i in indices:
        n0, n1 = store.node_ptr[i], store.node_ptr[i + 1]
        e0, e1 = store.edge_ptr[i], store.edge_ptr[i + 1]
        data_list.append(
            Data(
                z=torch.as_tensor(store.numbers[n0:n1], dtype=torch.long),
                edge_index=torch.as_tensor(store.edge_index[:, e0:e1], dtype=torch.long),
                edge_attr=torch.as_tensor(store.distances[e0:e1]),
                edge_weight=torch.as_tensor(edge_weights[e0:e1]),
                y=torch.tensor([store.targets[i]], dtype=torch.float32),
                num_nodes=int(n1 - n0),
            )
        )
    # A lone last crystal after other batches is dropped (crystal-train folds it into the batch before):
    # CGCNN's BatchNorm cannot train on a batch of one one-atom crystal.
    lone_tail = len(data_list) > batch_size and len(data_list) % batch_size == 1
    loader = DataLoader(
        data_list, batch_size=batch_size, shuffle=shuffle, drop_last=lone_tail,
        num_workers=BASELINE_SETTINGS["num_workers"], pin_memory=BASELINE_SETTINGS["pin_memory"],
    )

    def batches():
        for pyg in loader:
            pyg = pyg.to(device)
            yield GraphBatch(pyg.z, pyg.edge_index, pyg.edge_attr, pyg.edge_weight, pyg.batch, pyg.num_graphs, pyg.y)

    return batches


def measure_batching(graphs, train_idx, baseline, args, device) -> dict:
    """Crystals/s of batch formation alone over the training split: ours, and the baseline's collation."""
    ours = BatchIterator(graphs, train_idx, args.batch_size, shuffle=True)
    timed_pass(warmup_batches(ours, args.warmup_batches), device)
    seconds, crystals = timed_pass(ours, device)
    result = {"crystals": crystals, "ours_crystals_per_s": crystals / seconds}
    if baseline is not None:
        timed_pass(warmup_batches(baseline.batches(), args.warmup_batches), device)
        base_seconds, base_crystals = timed_pass(baseline.batches(), device)
        result["baseline_pyg_dataloader_crystals_per_s"] = base_crystals / base_seconds
        result["ratio"] = result["ours_crystals_per_s"] / result["baseline_pyg_dataloader_crystals_per_s"]
    return result


def measure(cfg, model_name, data, args, device, precision: str, compiled: bool, graphs, baseline: Baseline | None, publish) -> None:
    with float32_matmul_precision(precision):
        measure_setting(cfg, model_name, data, args, device, precision, compiled, graphs, baseline, publish)


def measure_setting(cfg, model_name, data, args, device, precision: str, compiled: bool, graphs, baseline: Baseline | None, publish) -> None:
    """Training and inference speed of one (model, precision, compile) setting, then of the baseline at that precision.

    publish(row) is called with the setting's own figures before the baseline runs (so a run stopped during it keeps
    them), and again with the baseline's added.
    """
    host_reset = reset_peak_host_memory()
    torch.manual_seed(0)
    if compiled:
        torch._dynamo.reset()  # no earlier setting's graphs count towards the recompile limit of this one
    model = hydra.utils.instantiate(cfg.model).to(device)
    forward = torch.compile(model, dynamic=True) if compiled else model
    optimizer = hydra.utils.instantiate(cfg.optim)(model.parameters())
    train_idx = data.splits["train"]
    normalizer = Normalizer.fit(data.store.targets[train_idx])
    ours = BatchIterator(graphs, train_idx, args.batch_size, shuffle=True, fold_lone_tail=True)  # as crystal-train trains
    ours_eval = BatchIterator(graphs, train_idx, args.eval_batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # held before the first step: every prepared model's resident graphs and this model's weights
    device_memory_before = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    warmup = args.warmup_batches
    train_epoch(forward, optimizer, warmup_batches(ours, warmup), normalizer, device, precision)  # warm-up (and compilation)
    before = compiled_graphs()
    seconds, crystals = train_epoch(forward, optimizer, ours, normalizer, device, precision)
    compiled_in_timing = compiled_graphs() - before
    inference_epoch(forward, warmup_batches(ours_eval, warmup), device, precision)
    before = compiled_graphs()
    infer_seconds, infer_crystals = inference_epoch(forward, ours_eval, device, precision)
    compiled_in_timing += compiled_graphs() - before
    result = {
        "model": model_name,
        "precision": precision,
        "compile": compiled,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_crystals_per_s": crystals / seconds,
        "train_epoch_s": seconds,
        "inference_crystals_per_s": infer_crystals / infer_seconds,
        "compiled_during_timing": compiled_in_timing,  # graphs torch.compile built inside the timed passes: should be 0
        "device_memory_before_gib": device_memory_before,
        "peak_device_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_host_memory_gib": peak_host_memory_gib(host_reset),
    }
    publish(result)
    if baseline is not None:
        if precision not in baseline.train_crystals_per_s:  # the same model, uncompiled, at this precision
            train_epoch(model, optimizer, warmup_batches(baseline.batches(), warmup), normalizer, device, precision)
            base_seconds, base_crystals = train_epoch(model, optimizer, baseline.batches(), normalizer, device, precision)
            baseline.train_crystals_per_s[precision] = base_crystals / base_seconds
        result["baseline_pyg_dataloader_crystals_per_s"] = baseline.train_crystals_per_s[precision]
        result["speedup_vs_baseline"] = result["train_crystals_per_s"] / result["baseline_pyg_dataloader_crystals_per_s"]
        publish(result)


def library_versions() -> dict:
    """CUDA (null on a CPU build), PyG and Triton (null when not installed): what the GPU figures depend on besides torch."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"cuda": torch.version.cuda, "torch_geometric": torch_geometric.__version__, "triton": triton}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device, "--device")
    report = {
        "malloc_keeps_freed_memory": keep_freed_memory(),  # as crystal-train does; the baseline in this process gains too
        "snapshot": args.snapshot or "demo",
        "limit": args.limit,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description(),
        "torch": torch.__version__,
        "versions": library_versions(),
        "batch_size": args.batch_size,
        "warmup_batches": "one epoch" if args.warmup_batches is None else args.warmup_batches,
        "baseline": None if args.no_baseline else BASELINE_SETTINGS,
        "graphs": {},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as temporary:
        cache_dir = Path(args.cache_dir or temporary)
        compile_settings = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        stored = {}
        for model_name in args.models.split(","):  # every graph build before any device use, so no worker forks after CUDA starts
            cfg = compose_cfg(args, model_name, cache_dir)
            settings = graph_settings(cfg.graph)
            host_reset = reset_peak_host_memory()
            start = time.perf_counter()
            data = prepare_data(cfg.data, settings, num_workers=args.workers)
            build_seconds = time.perf_counter() - start
            build_peak = peak_host_memory_gib(host_reset)
            start = time.perf_counter()
            data = prepare_data(cfg.data, settings, num_workers=args.workers)
            load_seconds = time.perf_counter() - start
            report["graphs"][model_name] = {
                "graph": settings.key(),
                "crystals": len(data.store),
                "edges": int(data.store.edge_ptr[-1]),
                "first_prepare_s": build_seconds,
                "first_prepare_peak_host_memory_gib": build_peak,
                "cached_prepare_s": load_seconds,
            }
            stored[model_name] = (cfg, data)
        save(args, report)
        prepared = {}
        for model_name, (cfg, data) in stored.items():
            distinct = getattr(hydra.utils.get_class(cfg.model._target_), "uses_distinct_distances", False)
            graphs = DeviceGraphs(data.store, device, distinct_distances=distinct)
            train_idx = data.splits["train"]
            baseline = None if args.no_baseline else Baseline(pyg_batches(data.store, train_idx, args.batch_size, device, shuffle=True))
            report["graphs"][model_name]["resident_on_device"] = graphs.resident
            report["graphs"][model_name]["batching"] = measure_batching(graphs, train_idx, baseline, args, device)
            prepared[model_name] = (cfg, data, graphs, baseline)
            save(args, report)
        for model_name, precision, compiled in measurement_order(list(prepared), args.precisions.split(","), compile_settings):
            cfg, data, graphs, baseline = prepared[model_name]
            guarded_measure(report, args, cfg, model_name, data, device, precision, compiled, graphs, baseline)
    print(json.dumps(report, indent=2))
    failed = [run for run in report["runs"] if "error" in run or "baseline_error" in run]
    if failed:
        sys.exit(f"{len(failed)} of {len(report['runs'])} measurements failed; their errors are in the JSON")


def measurement_order(models: list[str], precisions: list[str], compile_settings: list[bool]) -> list[tuple[str, str, bool]]:
    """(model, precision, compiled) in the order measured: compiled settings first, and every model within each setting,
    so a run stopped at its time limit holds each model's fastest settings rather than all of one model's."""
    return [(model, precision, compiled) for compiled in sorted(compile_settings, reverse=True) for precision in precisions for model in models]


def save(args, report: dict) -> None:
    """Rewrite --output with the report so far (nothing without --output)."""
    if args.output:
        write_json(Path(args.output), report)


def guarded_measure(report: dict, args, cfg, model_name, data, device, precision: str, compiled: bool, graphs, baseline) -> None:
    """measure() one setting into a row of report["runs"], saved as soon as it has figures; a failure (a compile error,
    out of memory) is recorded in the row as `error`, or `baseline_error` once its own figures are in, and the others still run."""
    row = {"model": model_name, "precision": precision, "compile": compiled}

    def publish(figures: dict) -> None:
        row.update(figures)
        if not any(run is row for run in report["runs"]):
            report["runs"].append(row)
        save(args, report)

    try:
        measure(cfg, model_name, data, args, device, precision, compiled, graphs, baseline, publish)
    except Exception as error:
        traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        publish({"baseline_error" if "train_crystals_per_s" in row else "error": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
