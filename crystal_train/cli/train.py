"""`crystal-train`: train a model from the packaged Hydra configs."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from crystal_train.training.loop import NonFiniteLossError
from crystal_train.training.resume import ResumeConfigError
from crystal_train.training.run import train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train and return the best validation MAE (the value a Hydra sweeper minimises).

    A diverging run or a refused resume exits with status 2; in a multirun it is logged and
    returns infinity instead, so the other jobs still run and the sweep summary lists it as failed.
    """
    hydra_cfg = HydraConfig.get()
    try:
        return train(cfg, Path(hydra_cfg.runtime.output_dir))
    except (NonFiniteLossError, ResumeConfigError) as error:
        log.error("%s", error)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return math.inf
        sys.exit(2)


if __name__ == "__main__":
    main()
