"""Whether a run continues from its last.pt, and that it continues the same training."""

from __future__ import annotations

from pathlib import Path

# Settings a resumed run may change: how long it trains, where and how fast it runs, where its
# files go, the units its reports name. Anything else would be ignored by the restored optimizer or
# scheduler state, or would mix two trainings in one history (a cosine T_max, a learning rate, the
# model or the data).
RESUMABLE_CHANGES = frozenset({
    "trainer.max_epochs", "trainer.max_minutes", "trainer.patience", "trainer.min_delta", "trainer.resume", "trainer.grad_clip",
    "trainer.device", "trainer.graphs_on_device", "trainer.compile", "trainer.progress_bar", "trainer.eval_batch_size",
    "data.cache_dir", "data.api_key", "data.units", "logger",
})


ABSENT = object()  # stands for a key one of two configs lacks

# Settings added to crystal-train with a default other than null: a checkpoint that predates one trained as its default does.
ADDED_SETTINGS = {"data.task": "regression", "trainer.freeze": []}

# Settings that name a file, which a resumed run may spell otherwise (relative where it was absolute, from elsewhere).
FILE_SETTINGS = ("data.snapshot", "trainer.init_from")


class ResumeConfigError(ValueError):
    """The run directory's last.pt was trained with settings this run would change."""


def should_resume(setting, last: Path) -> bool:
    """trainer.resume: auto (when last.pt exists), true (it must exist) or false."""
    setting = str(setting).lower()
    if setting not in ("auto", "true", "false"):  # "yes" or a typo starting over would set the run aside unasked
        raise ValueError(f"trainer.resume must be auto, true or false, not {setting!r}")
    if setting == "true":
        if not last.exists():
            raise FileNotFoundError(f"trainer.resume=true but there is no {last} to resume from")
        return True
    return setting == "auto" and last.exists()


def check_same_training(saved: dict, current: dict, last: Path, launch_dir: str | None = None) -> None:
    """Raise ResumeConfigError naming every setting (outside RESUMABLE_CHANGES) that differs from last.pt's.

    A setting last.pt lacks that is null here was added to crystal-train since, and null keeps it off.
    A data.snapshot or trainer.init_from spelled otherwise (relative to `launch_dir`, where training ran, and absolute
    now) is no change.
    """
    changes = {
        key: (old, new) for key, (old, new) in setting_changes(saved, current).items()
        if not _resumable(key) and not (key in FILE_SETTINGS and _same_file(old, launch_dir, new))
    }
    if changes:
        listed = "; ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())
        raise ResumeConfigError(
            f"cannot resume {last}: it was trained with different settings ({listed}). Resuming would ignore or mix "
            "them. Rerun with the original settings to continue it, or start a new run: another hydra.run.dir, "
            "or trainer.resume=false to start over in this directory."
        )


def _same_file(before, launch_dir: str | None, now) -> bool:
    """Whether data.snapshot `before` (relative to `launch_dir`) and `now` (relative to here) name one existing file."""
    if not isinstance(before, str) or not isinstance(now, str) or launch_dir is None:
        return False
    before_path, now_path = Path(launch_dir) / Path(before).expanduser(), Path(now).expanduser()
    return before_path.exists() and now_path.exists() and before_path.resolve() == now_path.resolve()


def check_same_lr_scale(saved_world_size: int | None, world_size: int, trainer_cfg, last: Path) -> None:
    """Raise ResumeConfigError if trainer.lr_scaling would scale the learning rate to another global batch than last.pt's.

    The rate scales with the number of ranks, and the optimiser and scheduler states restored from
    last.pt hold the rates of the old one. Checkpoints that predate the record are not checked.
    """
    rule = str(trainer_cfg.get("lr_scaling", "none"))
    if saved_world_size is None or int(saved_world_size) == world_size or rule == "none":
        return
    batch = int(trainer_cfg.batch_size)
    raise ResumeConfigError(
        f"cannot resume {last} on {world_size} rank(s): it trained on {saved_world_size}, and trainer.lr_scaling={rule} "
        f"scales the learning rate to the global batch ({batch} × {saved_world_size} then, {batch} × {world_size} now), "
        f"which its restored optimiser and scheduler states would ignore. Resume on {saved_world_size} rank(s), or start a new run."
    )


def check_same_data(saved: dict, split_ids: dict[str, list[str]], normalizer: dict, last: Path) -> None:
    """Raise ResumeConfigError unless the data read now split into the crystals, and hold the training targets, of last.pt.

    The same settings can read other data: a snapshot edited in place, a new data.cache_dir that
    downloads a newer Materials Project, a reader that skips other crystals. A random split then
    reshuffles, and crystals the restored weights trained on would be scored as test.
    """
    problems = []
    for name in sorted(saved["split_ids"].keys() | split_ids.keys()):
        before, now = set(saved["split_ids"].get(name, [])), set(split_ids.get(name, []))
        if before != now:
            added, missing = sorted(now - before), sorted(before - now)
            examples = ", ".join([*(f"+{i}" for i in added[:2]), *(f"-{i}" for i in missing[:2])])
            problems.append(f"the {name} split gained {len(added)} and lost {len(missing)} crystal(s) ({examples})")
    change = targets_change(saved["normalizer"], normalizer)
    if not problems and change:
        problems.append(f"the training targets changed ({change})")
    if problems:
        raise ResumeConfigError(
            f"cannot resume {last}: the data read now are not the data it trained on: {'; '.join(problems)}. Training on "
            "would mix them, and could score crystals it trained on as test. Start a new run: another hydra.run.dir, "
            "or trainer.resume=false to start over in this directory."
        )


def targets_change(saved: dict, now: dict) -> str | None:
    """How the output transform fitted on the training targets now (its state) differs from the one a checkpoint saved
    (read as this version saves it: older ones lack `minimum`), a regression's mean and std or a classifier's share of
    class 1; None when they agree."""
    from crystal_train.training.tasks import output_transform  # here: tasks imports torch, which resume's callers may not need

    before = output_transform(saved).state()
    if before == now:
        return None
    if "mean" in before and "mean" in now:
        return f"mean {before['mean']:.6g} -> {now['mean']:.6g}, std {before['std']:.6g} -> {now['std']:.6g}"
    if "positive_fraction" in before and "positive_fraction" in now:
        return f"share of class 1 {before['positive_fraction']:.6g} -> {now['positive_fraction']:.6g}"
    return f"{before} -> {now}"


def setting_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """config_changes but for a key `saved` lacks that is null in `current` (a setting added to crystal-train since
    `saved` was written, whose null keeps it off) or that is its ADDED_SETTINGS default."""
    return {
        key: (old, new) for key, (old, new) in config_changes(saved, current).items()
        if not (old is ABSENT and (new is None or ADDED_SETTINGS.get(key, ABSENT) == new))
    }


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """{dotted key: (saved value, current value)} for each setting that differs, in key order; a key only one has is ABSENT in the other."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    return {
        key: (flat_saved.get(key, ABSENT), flat_current.get(key, ABSENT))
        for key in sorted(flat_saved.keys() | flat_current.keys())
        if flat_saved.get(key, ABSENT) != flat_current.get(key, ABSENT)
    }


def keep_old_config(run_dir: Path) -> None:
    """Move the previous config.yaml aside (config.previous-N.yaml) before a resumed run writes its own."""
    old = run_dir / "config.yaml"
    if old.exists():
        old.rename(_first_free(run_dir, "config.previous-{}.yaml"))


def set_aside_earlier_run(run_dir: Path, names: tuple[str, ...], trained: tuple[str, ...]) -> Path | None:
    """Before a run that starts over (no last.pt, or trainer.resume=false) writes its files: if run_dir holds any of
    `trained` (what an earlier training leaves), move its `names` into run_dir/previous-N and return that folder."""
    if not any((run_dir / name).exists() for name in trained):
        return None
    aside = _first_free(run_dir, "previous-{}")
    aside.mkdir()
    for path in [run_dir / name for name in names] + sorted(run_dir.glob("config.previous-*.yaml")):
        if path.exists():
            path.rename(aside / path.name)
    return aside


def _first_free(run_dir: Path, pattern: str) -> Path:
    """run_dir / pattern.format(N) for the lowest N (from 1) that does not exist yet."""
    number = 1
    while (run_dir / pattern.format(number)).exists():
        number += 1
    return run_dir / pattern.format(number)


def _flatten(config, prefix: str = "") -> dict:
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _resumable(key: str) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:length]) in RESUMABLE_CHANGES for length in range(1, len(parts) + 1))


def _show(value) -> str:
    return "(absent)" if value is ABSENT else repr(value)
