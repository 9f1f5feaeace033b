"""Benchmark the graph cache of one snapshot: cold build, warm load and peak memory, printed as JSON.

    python scripts/benchmark_graphs.py --snapshot data.csv.xz --cutoff 8 --max-neighbors 12 --workers 2

Each phase runs in a fresh interpreter (so its peak memory is its own) through the same
`prepare_data` path that training uses: cold against an empty cache directory, warm against
the cache the cold phase wrote. Sub-phases are timed by wrapping the functions prepare_data calls.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SNAPSHOT = Path(__file__).resolve().parents[2] / "shared/datasets/mp2018_megnet/mp2018_megnet_with_structures.csv.xz"


def _max_neighbors(text: str) -> int | None:
    if text.lower() in ("none", "null"):
        return None
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer or 'none'")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT,
                        help="data source read by prepare_data (CSV/JSON/folder; default: the shared MP-2018 CSV)")
    parser.add_argument("--target", default="formation_energy_per_atom", help="target column (default: %(default)s)")
    parser.add_argument("--cutoff", type=float, default=8.0, help="neighbour cutoff in Å (default: %(default)s)")
    parser.add_argument("--max-neighbors", type=_max_neighbors, default=12,
                        help="neighbours kept per atom, an integer or 'none' for all within the cutoff (default: 12)")
    parser.add_argument("--workers", type=int, default=None,
                        help="graph-building processes (default: the CPUs this process may use)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="folder in which a fresh, temporary cache directory is made and removed afterwards "
                             "(default: the system temporary folder)")
    parser.add_argument("--limit", type=int, default=None, help="use a seeded subset of this many crystals (data.limit)")
    return parser.parse_args(argv)


def _measure(phase: str, args: argparse.Namespace, cache_dir: Path, results) -> None:
    """Run prepare_data once in this (fresh) process and put its timings and peak memory on `results`."""
    import logging

    from omegaconf import OmegaConf

    from crystal_train.data import cache, dataset, sources

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    timings: dict[str, float] = {}

    def timed(module, name: str, label: str) -> None:
        original = getattr(module, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timings[label] = timings.get(label, 0.0) + time.perf_counter() - start

        setattr(module, name, wrapper)

    timed(sources, "load_source", "read_source_s")
    timed(dataset, "load_or_build", "cache_load_or_build_s")
    timed(dataset, "build_store", "build_store_s")
    timed(cache, "atomic_torch_save", "save_s")
    data_cfg = OmegaConf.create(
        {
            "snapshot": str(args.snapshot),
            "target": args.target,
            "limit": args.limit,
            "seed": 0,
            "cache_dir": str(cache_dir),
            "split": {"kind": "random", "fractions": [0.8, 0.1, 0.1], "file": None},
        }
    )
    settings = dataset.GraphSettings(cutoff=args.cutoff, max_neighbors=args.max_neighbors)
    start = time.perf_counter()
    data = dataset.prepare_data(data_cfg, settings, num_workers=args.workers)
    timings["prepare_data_s"] = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    store = data.store
    results.put(
        {
            "phase": phase,
            **{key: round(value, 3) for key, value in timings.items()},
            "peak_rss_self_mib": round(own),
            "peak_rss_largest_child_mib": round(children),
            "peak_rss_self_plus_largest_child_mib": round(own + children),
            "crystals": len(store),
            "skipped": len(store.skipped),
            "atoms": int(store.node_ptr[-1]),
            "edges": int(store.edge_ptr[-1]),
            "isolated_atoms": store.isolated_atoms,
        }
    )


def _run_phase(phase: str, args: argparse.Namespace, cache_dir: Path) -> dict:
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_measure, args=(phase, args, cache_dir, results))
    process.start()
    result = None
    while result is None:  # poll, so that a child that dies before reporting is an error, not a hang
        alive = process.is_alive()  # looked at before waiting, so a report put just before exiting is still read
        try:
            result = results.get(timeout=1.0)
        except queue.Empty:
            if not alive:
                raise RuntimeError(f"{phase} phase failed with exit code {process.exitcode} before reporting") from None
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{phase} phase failed with exit code {process.exitcode}")
    return result


def _machine() -> dict:
    model = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": " ".join(model.split(":", 1)[-1].split()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.snapshot.exists():
        print(f"error: snapshot {args.snapshot} does not exist", file=sys.stderr)
        return 1
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="graph-bench-", dir=args.cache_dir))
    report = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": {
            "snapshot": str(args.snapshot),
            "target": args.target,
            "cutoff": args.cutoff,
            "max_neighbors": args.max_neighbors,
            "workers": args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
            "limit": args.limit,
        },
        "load_average_before": os.getloadavg(),
    }
    try:
        report["cold"] = _run_phase("cold", args, cache_dir)
        report["warm"] = _run_phase("warm", args, cache_dir)
        report["cache_file_mib"] = round(sum(p.stat().st_size for p in cache_dir.rglob("graphs-*.pt")) / 2**20, 1)
    except RuntimeError as error:
        print(f"error: {error} (its traceback is above)", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
