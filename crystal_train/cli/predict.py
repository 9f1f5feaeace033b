"""`crystal-predict ckpt=PATH input=FILE_DIR_OR_GLOB output=preds.csv`: predictions for new structures."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crystal_train.cli import run_reporting_errors


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from crystal_train.training.prediction import run_predict  # torch is imported only once it is needed: --help is quick

    run_reporting_errors("crystal-predict", run_predict, cfg)


if __name__ == "__main__":
    main()
