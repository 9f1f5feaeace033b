"""One training run, from a composed config to a run directory full of results."""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from crystal_train.atomic_file import held_or_refused, remove_unfinished_writes
from crystal_train.data.dataset import PreparedData, graph_settings, prepare_data
from crystal_train.data.features import model_elements
from crystal_train.data.graphs import GRAPH_VERSION
from crystal_train.data.loader import BatchIterator, DeviceGraphs, graph_tensor_bytes
from crystal_train.data.splits import split_ids
from crystal_train.data.store import GraphStore
from crystal_train.secrets_guard import take_api_key
from crystal_train.training import artifacts
from crystal_train.training.breakdown import element_breakdown, write_element_breakdown
from crystal_train.training.checkpoint import load_checkpoint, recover_interrupted_saves, trained_graph_version, warn_if_other_graphs
from crystal_train.training.config_checks import check_settings, graphs_on_device
from crystal_train.training.distributed import DistributedContext, setup_distributed, shutdown_distributed
from crystal_train.training.freezing import freeze_layers, trainable_parameters
from crystal_train.training.inference import predict, resolve_device
from crystal_train.training.initial_weights import starting_model
from crystal_train.training.loggers import check_loggers, make_loggers
from crystal_train.training.loop import Trainer, seed_everything
from crystal_train.training.lr_scaling import lr_scale, scale_learning_rate
from crystal_train.training.metrics import plus_standard_error
from crystal_train.training.plots import element_plot, learning_curve_plot, parity_plot, roc_plot
from crystal_train.training.resume import (
    check_same_data, check_same_lr_scale, check_same_training, keep_old_config, set_aside_earlier_run, should_resume,
)
from crystal_train.training.tasks import fit_output_transform

log = logging.getLogger(__name__)

RUN_LOCK = ".crystal-train.lock"
# Files a finished run writes at its end: a resumed run removes them, so that until it finishes
# again none of them describes a model its checkpoints no longer hold.
FINAL_RESULTS = (
    "metrics.json", "predictions_test.csv", "errors_by_element_test.csv", "errors_by_element_test.png", "parity_test.png", "roc_test.png",
    "learning_curve.png",
)
# Everything a training writes into its run directory (beside Hydra's own files): a run that starts
# over where an earlier one trained (left any of TRAINED_MARKS) moves that one's files into
# previous-N, so neither is lost nor mixed with the other.
RUN_FILES = (*FINAL_RESULTS, "checkpoints", "history.csv", "config.yaml", "split.json", "skipped.csv", "tensorboard")
TRAINED_MARKS = ("checkpoints/last.pt", "checkpoints/best.pt", "history.csv", "metrics.json")


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Train, select on validation, score the selected model on every split; returns the best validation score
    (MAE for regression, log loss for classification).

    Under torchrun every rank trains on its shard of each epoch; only rank 0 writes files.
    """
    started = time.monotonic()  # trainer.max_minutes counts the launch's data reading and graph building too
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    take_api_key(cfg, run_dir)
    context = setup_distributed(resolve_device(str(cfg.trainer.device)))
    try:
        with _run_dir_lock(run_dir, context):
            return _train(cfg, run_dir, context, started)
    finally:
        shutdown_distributed(context)


def _run_dir_lock(run_dir: Path, context: DistributedContext):
    """Rank 0 holds run_dir's lock for the whole run: two trainings writing one directory would mix their checkpoints."""
    if not context.is_main:
        return contextlib.nullcontext()
    return held_or_refused(run_dir / RUN_LOCK, _in_use(run_dir))


def _in_use(run_dir: Path) -> str:
    return f"another crystal-train run is writing to {run_dir}: give this one another hydra.run.dir, or wait for it to end"


def check_run_dir_free(run_dir: Path) -> None:
    """LockHeldError if a training holds run_dir now; checked before Hydra writes its .hydra/ and log there."""
    if (run_dir / RUN_LOCK).exists():
        with held_or_refused(run_dir / RUN_LOCK, _in_use(run_dir)):
            pass


def _train(cfg: DictConfig, run_dir: Path, context: DistributedContext, started: float) -> float:
    checkpoint_dir = run_dir / "checkpoints"
    last = checkpoint_dir / "last.pt"
    resume = should_resume(cfg.trainer.get("resume", "auto"), last)
    saved = load_checkpoint(last) if resume else None
    with open_dict(cfg):
        cfg.seed = _agreed_seed(_resumed_seed(cfg.get("seed"), saved), context)
    check_settings(cfg)  # also puts some settings in a standard form, which a resume compares
    if resume:
        check_same_training(saved["config"], OmegaConf.to_container(cfg, resolve=True), last, saved.get("launch_dir"))
        check_same_lr_scale(saved.get("world_size"), context.world_size, cfg.trainer, last)
        warn_if_other_graphs(saved, last)
    seed_everything(int(cfg.seed), bool(cfg.trainer.get("deterministic", False)))
    model = starting_model(cfg, saved)  # before the data, which draws on no torch RNG, so a bad batch size fails fast
    _check_batch_size(model, int(cfg.trainer.batch_size))
    frozen_layers = freeze_layers(model, cfg.trainer)
    check_loggers(cfg.get("logger"))

    data = prepare_data(
        cfg.data, graph_settings(cfg.graph), progress=bool(cfg.trainer.get("progress_bar", True)), elements=model_elements(model)
    )
    _check_trainable_splits(data)
    _check_training_shard(model, data.store, data.splits["train"], context.world_size)
    ids_by_split = split_ids(data.store, data.splits)
    normalizer = fit_output_transform(
        str(cfg.data.get("task", "regression")), data.store.targets[data.splits["train"]], minimum=cfg.data.get("target_min"),
        target=data.target,
    )
    if resume:
        check_same_data(saved, ids_by_split, normalizer.state(), last)
    if context.is_main:
        if resume:
            keep_old_config(run_dir)
            for name in FINAL_RESULTS:
                (run_dir / name).unlink(missing_ok=True)
        else:
            aside = set_aside_earlier_run(run_dir, RUN_FILES, TRAINED_MARKS)
            if aside is not None:
                log.info("Starting over in %s: the files of the training before are moved to %s", run_dir, aside)
            for leftover in remove_unfinished_writes(checkpoint_dir) + remove_unfinished_writes(run_dir):
                log.info("Removed %s, left by a write that was cut short", leftover)
        artifacts.write_config(run_dir / "config.yaml", cfg)
        artifacts.write_json(run_dir / "split.json", ids_by_split)
        artifacts.write_skipped(run_dir / "skipped.csv", data.store.skipped)

    device = context.device
    distinct = getattr(model, "uses_distinct_distances", False)
    graphs = DeviceGraphs(data.store, device, graphs_on_device(cfg.trainer.get("graphs_on_device", "auto")), distinct_distances=distinct)
    log.info(
        "Graph tensors (%.0f MiB) %s", graph_tensor_bytes(data.store, distinct) / 2**20,
        f"on {device}" if graphs.resident else f"in host memory, each batch pinned and copied to {device}",
    )
    loggers = make_loggers(cfg.get("logger"), run_dir) if context.is_main else []
    model = model.to(device)
    optimizer = hydra.utils.instantiate(cfg.optim)(trainable_parameters(model))
    _apply_lr_scaling(optimizer, cfg.trainer, context.world_size)
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer) if cfg.get("scheduler", {}).get("_target_") else None
    log.info(
        "Model %s with %d parameters on %s%s",
        type(model).__name__, sum(p.numel() for p in model.parameters()), device,
        f" (rank {context.rank} of {context.world_size})" if context.enabled else "",
    )

    training_counts = data.store.element_counts(data.splits["train"])
    trainer = Trainer(
        model,
        optimizer,
        scheduler,
        normalizer,
        BatchIterator(
            graphs, data.splits["train"], cfg.trainer.batch_size, shuffle=True, seed=int(cfg.seed),
            rank=context.rank, world_size=context.world_size, fold_lone_tail=True,
        ),
        BatchIterator(graphs, data.splits["val"], cfg.trainer.eval_batch_size, rank=context.rank, world_size=context.world_size, pad=False),
        cfg.trainer,
        checkpoint_dir,
        checkpoint_meta={
            "config": OmegaConf.to_container(cfg, resolve=True),
            "target": data.target,
            "units": data.units,
            "split_ids": ids_by_split,
            "training_elements": sorted(training_counts),
            "training_element_counts": training_counts,  # errors_by_element's n_train
            "launch_dir": str(Path.cwd()),  # where a relative data.snapshot is found
            "world_size": context.world_size,  # the ranks trainer.lr_scaling scaled the learning rate for
            # a resumed run trained partly on its earlier graphs, so it keeps their version when older
            "graph_version": min(GRAPH_VERSION, trained_graph_version(saved)) if resume else GRAPH_VERSION,
        },
        on_epoch_end=lambda state: _log_epoch(run_dir, state, loggers),
        context=context,
        started=started,
        frozen_layers=frozen_layers,
    )
    if resume:
        if context.is_main:
            recover_interrupted_saves(checkpoint_dir, saved)
            for leftover in remove_unfinished_writes(run_dir):
                log.info("Removed %s, left by a write that was cut short", leftover)
        trainer.restore(saved)
        log.info("Resumed from %s after epoch %d", last, trainer.state.epoch)
    try:
        state = trainer.fit()
    finally:
        for logger in loggers:
            logger.close()
    if context.is_main:
        artifacts.write_history(run_dir / "history.csv", state.history)
        best = load_checkpoint(checkpoint_dir / "best.pt", map_location=device)
        model.load_state_dict(best["model_state"])
        precision = str(cfg.trainer.get("precision", "32"))
        predictions = {
            name: predict(model, graphs, data.splits[name], normalizer, int(cfg.trainer.eval_batch_size), precision)
            for name in ("train", "val", "test")
        }
        report = score_splits(
            predictions, data, normalizer, run_dir, type(model).__name__, training_counts=training_counts,
            report_extra=dict(
                best_epoch=state.best_epoch, epochs=state.epoch, seed=int(cfg.seed),
                train_seconds=sum(row["seconds"] for row in state.history),  # training and validation, over every resume
            ),
        )
        learning_curve_plot(state.history, run_dir / "learning_curve.png", data.units, state.best_epoch)  # a classifier's units are ""
        log.info("Best epoch %d: %s", state.best_epoch, result_line(report, data.units))
        log.info(
            "Results in %s (metrics.json, predictions_test.csv, %s_test.png, errors_by_element_test.csv and .png); for new "
            "structures: crystal-predict ckpt=%s input=...",
            run_dir, "parity" if normalizer.task == "regression" else "roc", checkpoint_dir / "best.pt",
        )
    context.barrier()
    return float(state.best_val_score)


def result_line(report: dict, units: str) -> str:
    """The validation and test scores of a metrics.json report, with the baseline of a model that learnt nothing."""
    if report.get("task", "regression") == "classification":
        scores = ", ".join(
            f"{name} accuracy {_shown(report[name]['accuracy'])}, ROC AUC {_shown(report[name]['roc_auc'])}, "
            f"log loss {_shown(report[name]['log_loss'])}"
            for name in ("val", "test") if report[name]["n"]
        )
        baseline = report.get("baseline_test_accuracy")
        return scores + (
            f" (baselines: majority class accuracy {baseline:.4g}, training share log loss {report['baseline_test_log_loss']:.4g})"
            if baseline is not None else ""
        )
    units = f" {units}" if units else ""
    if not report["test"]["n"]:
        return f"val MAE {report['val']['mae']:.4g}{units} (no test split to score)"
    return (
        f"val MAE {report['val']['mae']:.4g}, test MAE {report['test']['mae']:.4g}{plus_standard_error(report['test'])}{units} "
        f"(mean-predictor baseline {report['baseline_test_mae']:.4g})"
    )


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _resumed_seed(configured, saved: dict | None):
    """The seed to run with: the configured one, or on resume without one the seed last.pt used.

    A configured seed is kept even on resume, so that check_same_training refuses a changed one.
    """
    if configured is None and saved is not None:
        return saved["config"]["seed"]
    return configured


def _check_trainable_splits(data: PreparedData) -> None:
    """Raise unless train and val both hold crystals (model selection needs val)."""
    empty = [name for name in ("train", "val") if len(data.splits[name]) == 0]
    if empty:
        sizes = ", ".join(f"{name} {len(indices)}" for name, indices in data.splits.items())
        raise ValueError(
            f"the {' and '.join(empty)} split of {data.source} is empty ({sizes}): training needs crystals in both "
            "train and val. Use more crystals (data.limit) or other data.split.fractions, or give the source a split column with val rows"
        )


def _check_batch_size(model: torch.nn.Module, batch_size: int) -> None:
    """Raise if a model with BatchNorm would train on one-crystal batches."""
    if batch_size < 2 and _has_batch_norm(model):
        raise ValueError(
            f"trainer.batch_size={batch_size} is too small for {type(model).__name__}: its BatchNorm layers need "
            "at least 2 crystals per training batch (a one-atom crystal alone cannot be normalised)"
        )


def _check_training_shard(model: torch.nn.Module, store: GraphStore, train: np.ndarray, world_size: int) -> None:
    """Raise if a model with BatchNorm could train on one atom alone: a one-crystal shard holding a one-atom crystal.

    Each rank trains on ceil(len(train) / world_size) crystals (the training shards are padded)
    and a lone last crystal is folded into the batch before it, so with a batch size of at least 2
    only a one-crystal shard gives one-crystal batches.
    """
    shard = math.ceil(len(train) / world_size)
    if shard >= 2 or not _has_batch_norm(model):
        return
    one_atom = [store.ids[i] for i in train if store.node_ptr[i + 1] - store.node_ptr[i] == 1]
    if one_atom:
        ranks = f" over {world_size} ranks" if world_size > 1 else ""
        raise ValueError(
            f"the training split holds {len(train)} crystal(s){ranks}, {shard} per training batch, and {', '.join(one_atom[:5])} "
            f"has a single atom: {type(model).__name__}'s BatchNorm layers cannot normalise one atom. Use more training "
            "crystals or fewer ranks"
        )


def _has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.BatchNorm1d) for module in model.modules())


def _apply_lr_scaling(optimizer: torch.optim.Optimizer, trainer_cfg: DictConfig, world_size: int) -> None:
    """Scale optim.lr to the global batch (trainer.batch_size on each of world_size ranks)."""
    rule = str(trainer_cfg.get("lr_scaling", "none"))
    global_batch = int(trainer_cfg.batch_size) * world_size
    reference = int(trainer_cfg.get("lr_reference_batch_size", 64))
    factor = lr_scale(rule, global_batch, reference)
    if factor != 1.0:
        scale_learning_rate(optimizer, factor)
        log.info(
            "Learning rate scaled ×%.3g (%s rule, global batch %d against reference %d): %.3g",
            factor, rule, global_batch, reference, optimizer.param_groups[0]["lr"],
        )


def _agreed_seed(seed, context: DistributedContext) -> int:
    """The configured seed, or one drawn on rank 0 and shared with every rank."""
    if seed is not None:
        return int(seed)
    drawn = [secrets.randbelow(2**31)]
    if context.enabled:
        torch.distributed.broadcast_object_list(drawn, src=0)
    return int(drawn[0])


def score_splits(
    predictions: dict[str, np.ndarray],
    data: PreparedData,
    transform,
    out_dir: Path,
    model_name: str,
    prediction_splits: tuple[str, ...] = ("test",),
    spreads: dict[str, np.ndarray] | None = None,
    training_counts: dict[int, int] | None = None,
    report_extra: dict | None = None,
) -> dict:
    """Metrics for each split's predictions (metrics.json schema, with `report_extra`'s entries); writes
    predictions_<split>.csv, errors_by_element_<split>.csv, metrics.json, then errors_by_element_<split>.png and
    parity plots (regression) or ROC curves (classification), using `transform`'s metrics and baseline: a figure that
    fails loses no score.

    `spreads` (an ensemble's; None for a split, or all, without one) adds each crystal's member_std to the predictions files;
    `training_counts` ({atomic number: training crystals holding it}) the n_train column of errors_by_element.
    """
    results, figures = {}, []
    for name, predicted in predictions.items():
        indices = data.splits[name]
        targets = data.store.targets[indices]
        results[name] = (targets, predicted)
        if name in prediction_splits:
            artifacts.write_predictions(
                out_dir / f"predictions_{name}.csv", [data.store.ids[i] for i in indices], predicted, targets,
                spread=(spreads or {}).get(name), formulas=data.store.formulas(indices),
            )
            by_element = element_breakdown(data.store, indices, predicted, transform, training_counts)
            write_element_breakdown(out_dir / f"errors_by_element_{name}.csv", by_element, transform)
            figures.append((name, targets, predicted, by_element))
    report = artifacts.metrics_report(results, data.target, data.units, transform) | (report_extra or {})
    artifacts.write_json(out_dir / "metrics.json", report)
    for name, targets, predicted, by_element in figures:
        title = f"{model_name}: {name} split"
        element_plot(by_element, out_dir / f"errors_by_element_{name}.png", transform.score, data.units, split=name, title=f"{title}, by element")
        if transform.task == "classification":
            roc_plot(targets, predicted, out_dir / f"roc_{name}.png", data.target, split=name, title=title)
        else:
            parity_plot(targets, predicted, out_dir / f"parity_{name}.png", data.target, data.units, split=name, title=title)
    return report


def _log_epoch(run_dir: Path, state, loggers) -> None:
    artifacts.write_history(run_dir / "history.csv", state.history)
    for logger in loggers:
        logger.log_epoch(state.history[-1])
