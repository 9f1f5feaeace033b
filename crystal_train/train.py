"""`torchrun --nproc_per_node=N -m crystal_train.train ...`: the training CLI under torchrun.

Every rank composes the same config; they share one run directory (named after the torchrun
launch unless hydra.run.dir is given), and only rank 0 writes Hydra's files and the outputs.
"""

from __future__ import annotations

import os
import sys

from crystal_train.cli.train import chosen_run_dir
from crystal_train.cli.train import main as train_main


def torchrun_arguments(argv: list[str], environ: dict) -> list[str]:
    """Extra Hydra overrides that make all ranks of one launch agree on one run directory."""
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    extra = []
    if chosen_run_dir(argv) is None:  # hydra.run.dir=, +hydra.run.dir= or ++hydra.run.dir= is kept
        launch = f"{environ.get('TORCHELASTIC_RUN_ID', 'none')}-{os.getppid()}"
        extra.append(f"hydra.run.dir=outputs/torchrun/{launch}")
    if int(environ.get("RANK", "0")) > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "trainer.progress_bar=false"]
    return extra


def main() -> None:
    sys.argv += torchrun_arguments(sys.argv[1:], dict(os.environ))
    train_main()


if __name__ == "__main__":
    main()
