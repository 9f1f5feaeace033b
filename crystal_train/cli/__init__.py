"""Console scripts: crystal-train, crystal-eval and crystal-predict."""

from __future__ import annotations

import os
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from crystal_train.host_memory import keep_freed_memory


def require_settings(cfg: DictConfig, command: str) -> None:
    """Exit with a one-line usage error, not a traceback, when a mandatory setting (`???`) was not given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"{command}: give {' '.join(key + '=...' for key in missing)} (see {command} --help)")


def run_reporting_errors(command: str, job: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """Run `job(cfg)`; an error (a missing file, a refused setting) ends it with one line and exit status 1,
    not a traceback, unless HYDRA_FULL_ERROR=1 asks for the traceback."""
    keep_freed_memory()
    try:
        require_settings(cfg, command)  # in here: listing the missing settings resolves every interpolation, which can fail
        job(cfg)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"{command}: {type(error).__name__}: {error}\n(HYDRA_FULL_ERROR=1 shows the traceback)") from None
