"""`crystal-train`: train a model from the packaged Hydra configs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crystal_train.training.loop import NonFiniteLossError
from crystal_train.training.resume import ResumeConfigError
from crystal_train.training.run import train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train and return the best validation MAE (the value a Hydra sweeper minimises)."""
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (NonFiniteLossError, ResumeConfigError) as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
