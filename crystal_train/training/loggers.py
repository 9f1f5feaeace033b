"""Per-epoch loggers called by the training loop (history.csv is written separately)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

class EpochLogger:
    """Receives one history row per epoch: epoch, lr, train_loss, the task's train and val scores (train_mae and val_mae,
    or train_log_loss and val_log_loss), seconds."""

    def log_epoch(self, row: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release resources; the default does nothing."""


class TensorBoardLogger(EpochLogger):
    """Writes the epoch scalars as TensorBoard events under ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = _summary_writer_class()(log_dir=str(self.log_dir))

    def log_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for key in row:
            if key != "epoch" and row[key] is not None:
                self.writer.add_scalar(key, float(row[key]), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "logger=tensorboard needs the tensorboard package: pip install tensorboard "
            "(or install crystal-train with the `tensorboard` extra: pip install '.[tensorboard]' from the checkout)"
        ) from error
    return SummaryWriter


def _tensorboard_enabled(logger_cfg: Mapping | None) -> bool:
    return logger_cfg is not None and bool(logger_cfg.get("tensorboard", False))


def check_loggers(logger_cfg: Mapping | None) -> None:
    """Raise now, before a run reads its data, if an enabled logger's package is missing."""
    if _tensorboard_enabled(logger_cfg):
        _summary_writer_class()


def make_loggers(logger_cfg: Mapping | None, run_dir: Path) -> list[EpochLogger]:
    """The loggers enabled in the ``logger`` config group; TensorBoard events go to ``run_dir/tensorboard``."""
    return [TensorBoardLogger(Path(run_dir) / "tensorboard")] if _tensorboard_enabled(logger_cfg) else []
