"""Console scripts: crystal-train, crystal-eval and crystal-predict."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def require_settings(cfg: DictConfig, command: str) -> None:
    """Exit with a one-line usage error, not a traceback, when a mandatory setting (`???`) was not given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"{command}: give {' '.join(key + '=...' for key in missing)} (see {command} --help)")
