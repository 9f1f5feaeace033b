"""`crystal-eval ckpt=PATH`: score a checkpoint (or an ensemble) on its own or another source."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crystal_train.cli import run_reporting_errors


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from crystal_train.training.evaluation import evaluate  # torch is imported only once it is needed: --help is quick

    run_reporting_errors("crystal-eval", evaluate, cfg)


if __name__ == "__main__":
    main()
