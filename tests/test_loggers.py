"""Epoch loggers: TensorBoard scalars round-trip and the logger config switch."""

import sys

import pytest

from config_utils import compose_config
from crystal_train.training.loggers import EpochLogger, TensorBoardLogger, make_loggers
from crystal_train.training.run import train

ROWS = [
    dict(epoch=e, lr=1e-3 / e, train_loss=1.0 / e, train_mae=0.8 / e, val_mae=0.9 / e, seconds=0.25 * e)
    for e in (1, 2, 3)
]


def test_tensorboard_logger_writes_readable_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    for row in ROWS:
        logger.log_epoch(row)
    logger.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train_loss", "train_mae", "val_mae", "lr", "seconds"}
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([row[tag] for row in ROWS], rel=1e-6)


def test_make_loggers_follows_config(tmp_path):
    assert make_loggers({"tensorboard": False}, tmp_path) == []
    assert make_loggers(None, tmp_path) == []
    (logger,) = make_loggers({"tensorboard": True}, tmp_path)
    assert isinstance(logger, TensorBoardLogger) and isinstance(logger, EpochLogger)
    assert logger.log_dir == tmp_path / "tensorboard"
    logger.close()


def test_logger_configs_select_tensorboard():
    from importlib.resources import files

    from omegaconf import OmegaConf

    configs = files("crystal_train.configs") / "logger"
    assert OmegaConf.load(configs / "csv.yaml").tensorboard is False
    assert OmegaConf.load(configs / "tensorboard.yaml").tensorboard is True


def test_missing_tensorboard_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_a_run_with_tensorboard_missing_stops_before_reading_data(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = compose_config("train", ["data=demo", "logger=tensorboard", f"data.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu"])
    with pytest.raises(ImportError, match="pip install tensorboard"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "config.yaml").exists()
