"""Keeps the Materials Project API key out of every file a run writes."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

API_KEY_ENV = "MP_API_KEY"
REDACTED = "<redacted>"


def take_api_key(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Move data.api_key into the MP_API_KEY environment variable of this process only.

    The config keeps no key, and any copy Hydra already wrote (run_dir/.hydra, and a multirun's
    multirun.yaml one level up) is redacted.
    """
    key = cfg.get("data", {}).get("api_key") if "data" in cfg else None
    if not key:
        return
    os.environ[API_KEY_ENV] = str(key)
    with open_dict(cfg):
        cfg.data.api_key = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        for path in [*run_dir.glob(".hydra/*.yaml"), *run_dir.parent.glob("multirun.yaml")]:
            text = path.read_text()
            if str(key) in text:
                path.write_text(text.replace(str(key), REDACTED))
