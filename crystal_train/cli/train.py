"""`crystal-train`: train a model from the packaged Hydra configs."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crystal_train.training.run import train


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train and return the best validation MAE (the value a Hydra sweeper minimises)."""
    return train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
