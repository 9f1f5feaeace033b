"""Checks of a composed training config that run before any data are read, so a mistake costs seconds."""

from __future__ import annotations

import difflib
import inspect
import logging
from functools import cache
from importlib import resources

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from crystal_train.data.splits import check_folds
from crystal_train.training.ema import checked_decay
from crystal_train.training.inference import PRECISIONS
from crystal_train.training.loop import LOSSES
from crystal_train.training.lr_scaling import RULES
from crystal_train.training.tasks import TASKS

log = logging.getLogger(__name__)


def check_settings(cfg: DictConfig) -> None:
    """Raise on a key no packaged config defines, a setting its class does not take, or a trainer value out of range."""
    check_known_keys(cfg)
    check_group_settings(cfg)
    check_trainer_choices(cfg.trainer)
    check_data_numbers(cfg.data)
    check_task(cfg.data, cfg.trainer)


@cache
def known_keys() -> dict[str, frozenset[str]]:
    """The top-level keys and those of the trainer, data, data.split, graph and logger blocks, as the packaged configs
    define them."""
    configs = resources.files("crystal_train.configs")

    def keys(group: str, block: str | None = None) -> frozenset[str]:
        found = set()
        for file in configs.joinpath(group).iterdir():
            if file.name.endswith(".yaml"):
                loaded = OmegaConf.create(file.read_text())
                found.update(str(key) for key in (loaded.get(block) or {} if block else loaded) if key != "defaults")
        return frozenset(found)

    top = {str(key) for key in OmegaConf.create(configs.joinpath("train.yaml").read_text()) if key != "defaults"}
    for group in configs.iterdir():
        if group.is_dir() and group.name != "hydra" and any(file.name.endswith(".yaml") for file in group.iterdir()):
            top.add(group.name)
            top.update(_global_keys(group))
    data = OmegaConf.create(configs.joinpath("data", "mp_formation.yaml").read_text())
    return {
        "": frozenset(top - {"hydra"}), "trainer": keys("trainer"), "data": keys("data"), "data.split": frozenset(map(str, data.split)),
        "graph": keys("model", "graph"), "logger": keys("logger"),
    }


def _global_keys(group) -> set[str]:
    """Top-level keys that the group's `# @package _global_` files set (model files set graph too)."""
    found = set()
    for file in group.iterdir():
        if file.name.endswith(".yaml") and "# @package _global_" in file.read_text():
            found.update(str(key) for key in OmegaConf.create(file.read_text()) if key != "defaults")
    return found


def check_known_keys(cfg: DictConfig) -> None:
    """Raise if the config's top level, trainer, data, data.split, graph or logger holds a key nothing reads: a typo
    added with +, which would else be ignored while the setting it meant keeps its default."""
    for path, known in known_keys().items():
        block = OmegaConf.select(cfg, path) if path else cfg
        unknown = sorted(str(key) for key in (block or {}) if str(key) not in known)
        if unknown:
            prefix = f"{path}." if path else ""
            hints = [
                f"{prefix}{key}" + "".join(f" (did you mean {prefix}{close}?)" for close in difflib.get_close_matches(key, known, n=1))
                for key in unknown
            ]
            where = f"the {path} settings" if path else "the top-level settings"
            raise ValueError(f"unknown setting {', '.join(hints)}; {where} are: {', '.join(sorted(known))}")


def check_group_settings(cfg: DictConfig) -> None:
    """Raise if the model, optim or scheduler config holds a setting its class does not take: what an experiment=
    overlay leaves when another option of that group is chosen (its plateau `factor` under scheduler=cosine, its
    CGCNN sizes under model=schnet)."""
    for group in ("model", "optim", "scheduler"):
        group_cfg = cfg.get(group)
        if not group_cfg or not group_cfg.get("_target_"):
            continue
        parameters = inspect.signature(hydra.utils.get_object(group_cfg._target_)).parameters
        if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
            continue
        foreign = sorted(str(key) for key in group_cfg if not str(key).startswith("_") and key not in parameters)
        if foreign:
            raise ValueError(
                f"{group} {group_cfg._target_} takes no {', '.join(foreign)}, set for another {group} (by an experiment= "
                f"overlay or an override): choose the {group} they belong to, or drop them with "
                + " ".join(f"~{group}.{key}" for key in foreign)
            )


def check_trainer_choices(trainer_cfg: DictConfig) -> None:
    """Raise if trainer.loss, lr_scaling, precision or graphs_on_device names an option that does not exist,
    max_epochs, patience or a batch size is under 1, warmup_epochs is not a whole number from 0, grad_clip or max_minutes is
    not a positive number (or null), or ema_decay is out of range; trainer.freeze is put in order."""
    for key, default, options in (("loss", "mse", tuple(LOSSES)), ("lr_scaling", "none", RULES), ("precision", "32", PRECISIONS)):
        value = str(trainer_cfg.get(key, default))
        if value not in options:
            raise ValueError(f"trainer.{key} must be one of {', '.join(options)}, not {value!r}")
    for key in ("max_epochs", "patience", "batch_size", "eval_batch_size", "lr_reference_batch_size"):  # 0 epochs leave no best.pt
        if whole_number(trainer_cfg.get(key, 1), f"trainer.{key}") < 1:
            raise ValueError(f"trainer.{key} must be at least 1, not {trainer_cfg[key]}")
    if whole_number(trainer_cfg.get("warmup_epochs", 0), "trainer.warmup_epochs") < 0:
        raise ValueError(f"trainer.warmup_epochs must be 0 (none) or more, not {trainer_cfg.warmup_epochs}")
    for key, what, off in (("max_minutes", "number of minutes", "no limit"), ("grad_clip", "gradient norm", "none")):
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"trainer.{key} must be a positive {what}, or null for {off}, not {value!r}")
    graphs_on_device(trainer_cfg.get("graphs_on_device", "auto"))
    if trainer_cfg.get("ema_decay") is not None:
        checked_decay(trainer_cfg.ema_decay)
    if "freeze" in trainer_cfg:
        trainer_cfg.freeze = freeze_names(trainer_cfg.freeze)


def freeze_names(setting) -> list[str]:
    """trainer.freeze as sorted distinct layer names (a name alone, or null, is taken too), so that a list naming the
    same layers otherwise resumes a run."""
    names = setting if isinstance(setting, (list, ListConfig)) else [] if setting is None else [setting]
    return sorted({str(name) for name in names})


def graphs_on_device(setting) -> bool | None:
    """trainer.graphs_on_device: auto (None: when they fit), true or false (also as the strings "true", "false")."""
    choice = str(setting).lower()
    if choice == "auto":
        return None
    if choice in ("true", "false"):
        return choice == "true"
    raise ValueError(f"trainer.graphs_on_device must be auto, true or false, not {setting!r}")


def check_data_numbers(data_cfg: DictConfig) -> None:
    """Raise, naming the setting, if data.seed, data.limit or data.num_crystals is not a whole number (only limit may be
    null), or data.split's folds do not work; a whole float such as 50.0 is stored as the int it means."""
    for key in ("seed", "limit", "num_crystals"):
        if key in data_cfg and not (key == "limit" and data_cfg[key] is None):
            data_cfg[key] = whole_number(data_cfg[key], f"data.{key}")
    split = data_cfg.get("split") or {}
    if split.get("folds") is not None:
        check_folds(split.folds, split.get("fold", 0), split.get("file"))
    elif split.get("fold", 0) != 0:  # else every fold of a sweep would train on the same split
        raise ValueError(f"data.split.fold={split.fold} picks a part of a K-fold split: give data.split.folds=K too")


def check_task(data_cfg: DictConfig, trainer_cfg: DictConfig) -> None:
    """Raise if data.task is unknown, or a setting of the other task is set: data.target_min (a regression's floor) for
    a classifier, data.positive_at_most (how classes are made) for a regression. Warn that a classifier ignores a
    trainer.loss other than the default."""
    task = str(data_cfg.get("task", "regression"))
    if task not in TASKS:
        raise ValueError(f"data.task must be one of {', '.join(TASKS)}, not {task!r}")
    if task == "classification" and str(trainer_cfg.get("loss", "mse")) != "mse":
        log.warning("trainer.loss=%s is a regression setting: a classifier trains on binary cross-entropy", trainer_cfg.loss)
    if task == "classification" and data_cfg.get("target_min") is not None:
        raise ValueError(
            f"data.target_min={data_cfg.target_min} floors a regression's predictions, but data.task=classification predicts "
            "probabilities: add data.target_min=null (or choose data=mp_metal for metals against non-metals)"
        )
    if task == "regression" and data_cfg.get("positive_at_most") is not None:
        raise ValueError(
            f"data.positive_at_most={data_cfg.positive_at_most} makes two classes of the target, but data.task=regression: "
            "add data.task=classification, or drop data.positive_at_most"
        )


def whole_number(value, setting: str) -> int:
    """`value` as an int; ValueError naming `setting` for 'two', 2.5, true or null."""
    if isinstance(value, bool) or value is None or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{setting}={value!r}: expected a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{setting}={value!r}: expected a whole number") from None
