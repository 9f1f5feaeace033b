"""Scoring a checkpoint, or the mean of several, on its own data and split or on another source (crystal-eval)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from crystal_train.data.dataset import WHOLE_SOURCE, graph_settings, prepare_data, target_units
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.splits import SPLIT_ORDER, splits_from_ids
from crystal_train.listing import first_few
from crystal_train.training import artifacts
from crystal_train.training.applicability import warn_unseen_elements
from crystal_train.training.ensemble import Ensemble, checkpoint_paths
from crystal_train.training.inference import resolve_device
from crystal_train.training.metrics import METRIC_LABELS, plus_standard_error, spread_quality
from crystal_train.training.resume import targets_change
from crystal_train.training.run import score_splits
from crystal_train.training.tasks import fit_output_transform, output_transform

log = logging.getLogger(__name__)

SPLIT_FROM = ("auto", "checkpoint", "data")
SOURCE_SETTINGS = ("target", "id_column", "cif_column", "units", "positive_at_most")  # data.KEY of eval.yaml, applied to another source


def evaluate(cfg: DictConfig) -> dict:
    """Score the checkpoint (or the mean of several); writes metrics.json and predictions_<split>.csv into `output`."""
    paths = checkpoint_paths(cfg.ckpt)
    split_from = str(cfg.get("split_from", "auto"))
    if split_from not in SPLIT_FROM:
        raise ValueError(f"split_from must be one of {', '.join(SPLIT_FROM)}, not {split_from!r}")
    if len(paths) > 1 and not cfg.get("output"):
        raise ValueError(f"ckpt lists {len(paths)} checkpoints: give output=FOLDER for the ensemble's scores")
    if cfg.get("output"):
        _refuse_a_training_run_directory(Path(cfg.output).expanduser())
    device = resolve_device(str(cfg.device), "device")
    ensemble = Ensemble.load(paths, device, atom_init=cfg.get("atom_init"))
    checkpoint, checkpoint_path = ensemble.checkpoint, paths[0]
    train_cfg = OmegaConf.create(checkpoint["config"])
    other_source = cfg.data.get("snapshot") is not None
    if not other_source and checkpoint.get("source_checkpoint") is not None:
        raise ValueError(
            f"{checkpoint_path} is an original CGCNN checkpoint, which records no data: give data.snapshot=PATH to score it "
            "(and data.target=COLUMN unless the labels are a column named target, as in a CGCNN folder)"
        )
    whole_source = other_source and cfg.get("split") is None
    names = (WHOLE_SOURCE,) if whole_source else _split_names(str(cfg.get("split") or "test"))
    saved = checkpoint.get("split_ids")
    source_settings = {key: cfg.data.get(key) for key in SOURCE_SETTINGS if cfg.data.get(key) is not None}
    if source_settings and not other_source:
        raise ValueError(f"{', '.join(f'data.{key}' for key in source_settings)} describe another source: give it with data.snapshot=PATH")
    if "positive_at_most" in source_settings and ensemble.task != "classification":
        raise ValueError(f"data.positive_at_most makes two classes for a classifier, but {checkpoint_path} is a regression model")
    if other_source:
        train_cfg.data.target_min = None  # the source's labels are scored as they are; the floor bounds the predictions
        train_cfg.data.snapshot = str(cfg.data.snapshot)
        train_cfg.data.limit = None
        train_cfg.data.split.file = None
        train_cfg.data.split.kind = "random"  # the source's own split column, else a fresh random split (not the training's kind)
        train_cfg.data.split.folds = None
        train_cfg.data.id_column = train_cfg.data.cif_column = None  # the training source's: found by name unless given
        train_cfg.data.update(source_settings)
        if "target" in source_settings:  # another column: the training column's class rule is not its own
            train_cfg.data.positive_at_most = cfg.data.get("positive_at_most")
    else:
        use_saved_split = bool(saved) and split_from != "data"
        _find_training_files(train_cfg.data, checkpoint.get("launch_dir"), checkpoint_path, use_saved_split)
    trained_units = checkpoint.get("units") or ""
    scored_units = target_units(str(train_cfg.data.target), train_cfg.data.get("units"))
    if trained_units and scored_units and scored_units != trained_units:
        raise ValueError(
            f"{checkpoint_path} predicts {checkpoint.get('target')} in {trained_units}, but data.target={train_cfg.data.target} is in "
            f"{scored_units}: name the source's column of the model's quantity (or its units with data.units=)"
        )
    data = prepare_data(train_cfg.data, graph_settings(train_cfg.graph), elements=ensemble.elements(), whole=whole_source)
    data.units = data.units or trained_units  # a CGCNN folder's labels have no units of their own
    if other_source and ensemble.minimum is not None:
        _warn_labels_below(data, ensemble.minimum)
    if not whole_source:
        if saved and split_from != "data" and (not other_source or _holds_every_id(data.store, saved)):
            data.splits = splits_from_ids(data.store, saved, origin=f"the split saved in {checkpoint_path}")
            if not other_source:
                _warn_if_training_targets_changed(data, checkpoint, checkpoint_path)
        elif split_from == "checkpoint":
            raise ValueError(
                f"split_from=checkpoint: {cfg.data.snapshot} does not hold every crystal of the split saved in {checkpoint_path}"
                if saved else f"split_from=checkpoint: {checkpoint_path} saved no split"
            )
    _warn_about_crystals_they_learned_from(data.store, data.splits, names, ensemble)
    out_dir = Path(cfg.output).expanduser() if cfg.get("output") else checkpoint_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_skipped(out_dir / "skipped.csv", data.store.skipped)
    warn_unseen_elements(data.store, np.concatenate([data.splits[name] for name in names]), ensemble.training_elements())
    graphs = DeviceGraphs(data.store, device, distinct_distances=ensemble.uses_distinct_distances)
    members = {name: ensemble.member_predictions(graphs, data.splits[name], int(cfg.batch_size)) for name in names}
    combined = {name: ensemble.combine(stack) for name, stack in members.items()}
    transform = ensemble.members[0].transform  # the first member's training mean or majority class is the baseline
    extra = {"checkpoint": str(checkpoint_path), "best_epoch": _best_epoch(checkpoint) if len(paths) == 1 else None}
    if len(paths) > 1:
        extra["members"] = [
            {"checkpoint": str(member.path), "best_epoch": _best_epoch(member.checkpoint)}
            | {name: transform.metrics(data.store.targets[data.splits[name]], stack[i]) for name, stack in members.items()}
            for i, member in enumerate(ensemble.members)
        ]
        if transform.task == "regression":  # does the members' spread say which predictions to trust?
            extra["member_spread"] = {
                name: spread_quality(data.store.targets[data.splits[name]], mean, spread) for name, (mean, spread) in combined.items()
            }
        headline = "mae" if transform.task == "regression" else "roc_auc"
        for member in extra["members"]:
            log.info(
                "member %s: %s", member["checkpoint"],
                "  ".join(f"{name} {METRIC_LABELS[headline]} {_number(member[name][headline])}" for name in names),
            )
        for name, quality in extra.get("member_spread", {}).items():
            log.info(
                "%s: members' spread %s on average, rank correlation with the error %s, errors within one spread %s, within two %s",
                name, *(_number(quality[key]) for key in ("mean_spread", "spearman_error_spread", "within_1_spread", "within_2_spread")),
            )
    report = score_splits(
        {name: mean for name, (mean, _) in combined.items()}, data, transform, out_dir, ensemble.name, prediction_splits=names,
        spreads={name: spread for name, (_, spread) in combined.items()}, training_counts=ensemble.training_element_counts(),
        report_extra=extra,
    )
    for name in names:
        scores = report[name]
        shown = "  ".join(
            f"{METRIC_LABELS[key]} {_number(value)}{plus_standard_error(scores) if key == 'mae' else ''}"
            for key, value in scores.items() if key not in ("n", "mae_stderr")
        )
        log.info("%s: %s  n %d", name, shown, scores["n"])
    log.info("Wrote %s", out_dir / "metrics.json")
    return report


def _warn_if_training_targets_changed(data, checkpoint: dict, checkpoint_path: Path) -> None:
    """Warn when the training split's targets read now are not those the checkpoint's output transform was fitted on:
    the data changed since training (a snapshot edited in place), so the scores are of labels it did not learn from."""
    trained = output_transform(checkpoint["normalizer"])
    try:
        now = fit_output_transform(trained.task, data.store.targets[data.splits["train"]], getattr(trained, "minimum", None)).state()
    except ValueError as error:  # e.g. a training split now of one class
        now = {"error": str(error)}
    change = targets_change(checkpoint["normalizer"], now)
    if change:
        log.warning(
            "The training split's targets read now are not those %s trained on (%s): %s changed since training, so these "
            "scores are of other labels than the model learnt from", checkpoint_path, change, data.source,
        )


def _warn_labels_below(data, floor: float) -> None:
    """Name the crystals of another source labelled below the model's lower bound, which no prediction goes below."""
    below = np.flatnonzero(data.store.targets < floor)
    if below.size:
        log.warning(
            "%d crystal(s) of %s have a %s below %g, the lower bound the model's predictions are floored at (its training's "
            "data.target_min), so each one's error is at least its distance below it: %s",
            below.size, data.source, data.target, floor, first_few(f"{data.store.ids[i]} ({data.store.targets[i]:g})" for i in below),
        )


def _refuse_a_training_run_directory(out_dir: Path) -> None:
    """Raise if `out_dir` holds a training run, whose own metrics.json and skipped.csv the scores would replace."""
    if (out_dir / "history.csv").is_file() or (out_dir / "checkpoints").is_dir():
        raise ValueError(
            f"output={out_dir} holds a training run: its metrics.json and skipped.csv would be replaced. Give another "
            f"folder, or leave output= out to write beside the checkpoint"
        )


def _find_training_files(data_cfg: DictConfig, launch_dir: str | None, checkpoint_path: Path, use_saved_split: bool) -> None:
    """Point the training run's relative data.snapshot and data.split.file at the directory training ran in
    when they are not found from here (the split file is not read at all when the checkpoint's saved split
    replaces it), and a relative data.cache_dir at the one training used, so its graphs are not built again."""
    cache_dir = data_cfg.get("cache_dir")
    if cache_dir is not None and launch_dir is not None and (Path(launch_dir) / str(cache_dir)).is_dir():
        data_cfg.cache_dir = str(Path(launch_dir) / str(cache_dir))
    if data_cfg.get("snapshot") is not None:
        data_cfg.snapshot = _training_path(
            str(data_cfg.snapshot), launch_dir, checkpoint_path, "give data.snapshot=PATH (with split=test for its test split)"
        )
    split_cfg = data_cfg.get("split")
    if split_cfg is not None and split_cfg.get("file") is not None:
        split_cfg.file = None if use_saved_split else _training_path(str(split_cfg.file), launch_dir, checkpoint_path, "give data.split.file=PATH")


def _training_path(path: str, launch_dir: str | None, checkpoint_path: Path, hint: str) -> str:
    """`path` itself when found from here (or absolute), else the same relative path in the directory training ran in."""
    if Path(path).expanduser().is_absolute() or Path(path).exists():
        return path
    if launch_dir is not None and (Path(launch_dir) / path).exists():
        return str(Path(launch_dir) / path)
    raise FileNotFoundError(
        f"{checkpoint_path} was trained on {path}, relative to {launch_dir or 'the directory training ran in'}, "
        f"and it is not found from here: run crystal-eval there, or {hint}"
    )


def _warn_about_crystals_they_learned_from(store, splits: dict, names: tuple[str, ...], ensemble: Ensemble) -> None:
    """Warn, with counts and examples, when a scored split holds crystals any checkpoint trained or was selected on."""
    by_split: list[tuple[dict, list[Path]]] = []  # checkpoints with the same saved split share one warning
    for member in ensemble.members:
        saved = member.checkpoint.get("split_ids")
        if not saved:
            if len(ensemble.members) > 1:
                log.warning("%s saved no split: whether it trained on the crystals scored here cannot be checked", member.path)
            continue
        group = next((paths for split, paths in by_split if split == saved), None)
        if group is None:
            by_split.append((saved, [member.path]))
        else:
            group.append(member.path)
    for saved, paths in by_split:
        for name in names:
            scored = {store.ids[i] for i in splits[name]}
            for used in {"train": (), "val": ("train",)}.get(name, ("train", "val")):  # the splits that fitted or selected it
                seen = sorted(scored.intersection(saved.get(used, [])))
                if seen:
                    log.warning(
                        "%d of the %d crystals scored as %s were in the %s split of %s (%s): their score is optimistic",
                        len(seen), len(scored), name, used, " and ".join(map(str, paths)),
                        first_few(seen, shown=3),
                    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _best_epoch(checkpoint: dict) -> int | None:
    return checkpoint.get("train_state", {}).get("best_epoch")


def _holds_every_id(store, saved: dict[str, list[str]]) -> bool:
    """Whether every id of the checkpoint's saved split is in `store` (the training data, or a copy of it)."""
    return set(store.ids).issuperset(item_id for ids in saved.values() for item_id in ids)


def _split_names(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLIT_ORDER
    if split not in SPLIT_ORDER:
        raise ValueError(f"unknown split {split!r}: use train, val, test or all")
    return (split,)
