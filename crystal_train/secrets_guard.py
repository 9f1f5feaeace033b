"""Keeps the Materials Project API key out of every file a run writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from crystal_train.atomic_file import atomic_write

API_KEY_ENV = "MP_API_KEY"
REDACTED = "<redacted>"
API_KEY_OVERRIDE = re.compile(r"\+{0,2}data\.api_key=(.*)", re.DOTALL)


def take_api_key_argument(arguments: list[str]) -> list[str]:
    """The command-line arguments without data.api_key=KEY, whose key goes into this process's MP_API_KEY.

    Hydra then never sees the key, so no file, folder name or console line it writes can hold it
    (it saves multirun.yaml before any job runs, and may name job folders after the overrides).
    """
    kept = []
    for argument in arguments:
        match = API_KEY_OVERRIDE.fullmatch(argument)
        if match is None:
            kept.append(argument)
            continue
        key = match.group(1).strip().strip("'\"")
        if key and key != "null":
            os.environ[API_KEY_ENV] = key
    return kept


def take_api_key(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Move data.api_key into the MP_API_KEY environment variable of this process only.

    The config keeps no key, and any copy Hydra already wrote (its output_subdir of the run
    directory, .hydra by default, and a multirun's multirun.yaml) is redacted.
    """
    key = cfg.get("data", {}).get("api_key") if "data" in cfg else None
    if not key:
        return
    os.environ[API_KEY_ENV] = str(key)
    with open_dict(cfg):
        cfg.data.api_key = None
    if run_dir is not None:
        for path in _hydra_copies(Path(run_dir)):
            text = path.read_text()
            if str(key) in text:
                redacted = text.replace(str(key), REDACTED).encode()
                atomic_write(path, lambda handle: handle.write(redacted))  # torchrun ranks may redact the same file


def _hydra_copies(run_dir: Path) -> list[Path]:
    """The config files Hydra wrote for this run: where its settings put them, and where they are by default."""
    folders, sweep_files = [run_dir / ".hydra"], [run_dir.parent / "multirun.yaml"]
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            folders.append(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode == RunMode.MULTIRUN:
            sweep_files.append(Path(hydra.sweep.dir) / "multirun.yaml")
    found = {path.resolve() for folder in folders for path in folder.glob("*.yaml")}
    found |= {path.resolve() for path in sweep_files if path.is_file()}
    return sorted(found)
