"""The training loop: epochs, validation, LR scheduling, early stopping and checkpoints."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from crystal_train.data.loader import BatchIterator
from crystal_train.training.checkpoint import save_checkpoint
from crystal_train.training.distributed import DistributedContext
from crystal_train.training.ema import WeightAverage
from crystal_train.training.inference import float32_matmul_precision, precision_context
from crystal_train.training.metrics import Normalizer
from crystal_train.training.tasks import ClassProbability

log = logging.getLogger(__name__)

LOSSES = {"mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss, "huber": torch.nn.functional.huber_loss}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Progress that a resumed run must restore."""

    epoch: int = 0  # epochs completed
    best_val_score: float = math.inf  # the transform's score: MAE (regression) or log loss (classification)
    best_epoch: int = 0
    epochs_since_best: int = 0
    history: list = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """Runs epochs until max_epochs or early stopping, writing best.pt and last.pt each epoch."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        normalizer: Normalizer | ClassProbability,
        train_batches: BatchIterator,
        val_batches: BatchIterator,
        trainer_cfg,
        checkpoint_dir: Path,
        checkpoint_meta: dict,
        on_epoch_end=None,
        context: DistributedContext | None = None,
        started: float | None = None,
        frozen_layers: list[torch.nn.Module] = (),
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.normalizer = normalizer
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.cfg = trainer_cfg
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_meta = checkpoint_meta
        self.on_epoch_end = on_epoch_end
        self.started = started  # time.monotonic() at the launch's start, for trainer.max_minutes (None: when fit starts)
        self.frozen_layers = list(frozen_layers)  # trainer.freeze's: in eval mode while the rest trains
        self.state = TrainState()
        self.loss_fn = LOSSES[trainer_cfg.get("loss", "mse")] if normalizer.task == "regression" else normalizer.loss
        self.score = normalizer.score  # history's train_<score> and val_<score> columns
        self.score_label = normalizer.score_label
        self.precision = str(trainer_cfg.get("precision", "32"))
        self.context = context or DistributedContext(device=next(model.parameters()).device)
        ema_decay = trainer_cfg.get("ema_decay")
        self.average = WeightAverage(model, float(ema_decay)) if ema_decay is not None else None
        self.evaluated = self.average.module if self.average is not None else model  # the weights validated and saved
        self.train_forward, self.eval_forward = _forwards(model, self.evaluated, self.context, bool(trainer_cfg.get("compile", False)))
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_steps = int(trainer_cfg.get("warmup_epochs", 0)) * len(train_batches)

    # ----- checkpoints ------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """model_state holds the validated weights (the moving average when trainer.ema_decay is set)."""
        averaged = {"training_model_state": self.model.state_dict()} if self.average is not None else {}
        return {
            **self.checkpoint_meta,
            "model_state": self.evaluated.state_dict(),
            **averaged,
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "train_state": asdict(self.state),
            "normalizer": self.normalizer.state(),
            "rng_state": {  # no CUDA generator state: nothing draws from it, and its per-GPU list breaks resuming on fewer GPUs
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "batches": self.train_batches.rng.bit_generator.state,
            },
        }

    def restore(self, checkpoint: dict) -> None:
        """Continue from a last.pt: model, optimizer, scheduler, early stopping, epoch and RNGs."""
        self.model.load_state_dict(checkpoint.get("training_model_state", checkpoint["model_state"]))
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.scheduler is not None and checkpoint.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler_state"])
        self.state = TrainState(**_renamed_fields(checkpoint["train_state"]))
        if self.average is not None:
            self.average.load(checkpoint["model_state"], updates=self.state.epoch * len(self.train_batches))
        rng = checkpoint["rng_state"]
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_tuple(rng["python"]))
        self.train_batches.rng.bit_generator.state = rng["batches"]

    # ----- epochs -----------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to max_epochs or early stopping, with float32 matrix products in trainer.precision's mode throughout."""
        with float32_matmul_precision(self.precision):
            return self._run_epochs()

    def _run_epochs(self) -> TrainState:
        max_epochs = int(self.cfg.max_epochs)
        patience = int(self.cfg.patience)
        min_delta = float(self.cfg.get("min_delta", 0.0))
        if self.state.epoch:  # resumed: the patience may have been raised since it stopped
            self.state.stopped_early = self.state.epochs_since_best >= patience
        deadline = _Deadline(self.cfg.get("max_minutes"), self.context, self.started)
        while self.state.epoch < max_epochs and not self.state.stopped_early and not deadline.passed:
            start = time.perf_counter()
            first_step = self.state.epoch * len(self.train_batches)
            if first_step < self.warmup_steps:
                self._set_warmup_lr(first_step)  # so that history's lr is the one of the epoch's first step
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_score = self._train_epoch()
            val_score = self._validate()
            epoch = self.state.epoch + 1
            if not math.isfinite(val_score):  # no epoch could improve on it, and best.pt would never be written
                raise NonFiniteLossError(
                    f"non-finite validation {self.score_label} in epoch {epoch} (finite training loss {train_loss:.4g}); stopped, and "
                    f"{self._kept_checkpoint()}. In trainer.precision=bf16 try 32; otherwise lower optim.lr or set trainer.grad_clip."
                )
            if self.scheduler is not None and epoch * len(self.train_batches) >= self.warmup_steps:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_score)
                else:
                    self.scheduler.step()
            improved = val_score < self.state.best_val_score - min_delta
            if improved:
                self.state.best_val_score, self.state.best_epoch, self.state.epochs_since_best = val_score, epoch, 0
            else:
                self.state.epochs_since_best += 1
            self.state.epoch = epoch
            self.state.stopped_early = self.state.epochs_since_best >= patience
            row = {
                "epoch": epoch, "lr": lr, "train_loss": train_loss, f"train_{self.score}": train_score, f"val_{self.score}": val_score,
                "seconds": time.perf_counter() - start,
            }
            self.state.history.append(row)
            if self.context.is_main:
                checkpoint = self.checkpoint()
                # last.pt first: a kill before best.pt is written is repaired on resume from it.
                save_checkpoint(self.checkpoint_dir / "last.pt", **checkpoint)
                if improved:
                    save_checkpoint(self.checkpoint_dir / "best.pt", **checkpoint)
            log.info(
                "epoch %d/%d  lr %.2e  train loss %.4g  train %s %.4g  val %s %.4g%s  (%.1f s)",
                epoch, max_epochs, lr, train_loss, self.score_label, train_score, self.score_label, val_score,
                "  *best*" if improved else "", row["seconds"],
            )
            if self.on_epoch_end is not None and self.context.is_main:
                self.on_epoch_end(self.state)
            deadline.after_epoch(row["seconds"])
        if deadline.passed and self.state.epoch < max_epochs and not self.state.stopped_early:
            log.info(
                "Time limit: stopped after epoch %d of %d, since another would end past trainer.max_minutes=%g of this "
                "launch; the results are of its best epoch so far (%d). The same command continues the training",
                self.state.epoch, max_epochs, deadline.minutes, self.state.best_epoch,
            )
        if self.state.stopped_early:
            log.info(
                "Early stopping: no val %s improvement for %d epochs (best %.4g at epoch %d)",
                self.score_label, patience, self.state.best_val_score, self.state.best_epoch,
            )
        return self.state

    def _train_epoch(self) -> tuple[float, float]:
        self.model.train()
        for layer in self.frozen_layers:  # their BatchNorm keeps its running statistics
            layer.eval()
        clip = self.cfg.get("grad_clip")
        device = next(self.model.parameters()).device
        loss_sum = torch.zeros((), device=device)
        error_sum = torch.zeros((), device=device)
        count = 0
        batches = tqdm(self.train_batches, desc=f"epoch {self.state.epoch + 1}", leave=False, disable=not self.cfg.get("progress_bar", True), mininterval=1.0)
        for step, batch in enumerate(batches, start=self.state.epoch * len(self.train_batches)):
            if step < self.warmup_steps:
                self._set_warmup_lr(step)
            with precision_context(device.type, self.precision):
                output = self.train_forward(batch)
            output = output.float()
            target = self.normalizer.normalize(batch.targets).float()  # normalised in float64, then cast
            loss = self.loss_fn(output, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
            self.optimizer.step()
            if self.average is not None:
                self.average.update()
            loss_sum += loss.detach() * batch.num_graphs
            error_sum += self.normalizer.train_errors(output.detach(), target).sum()
            count += batch.num_graphs
        totals = self.context.all_reduce_sum(torch.stack([loss_sum, error_sum, torch.tensor(float(count), device=device)]))
        loss_sum, error_sum, count = totals[0], totals[1], int(totals[2])
        train_loss = float(loss_sum) / max(count, 1)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"non-finite training loss in epoch {self.state.epoch + 1}; stopped, and {self._kept_checkpoint()}. "
                + (f"Resume it with a smaller trainer.grad_clip (now {clip}), " if clip else "Resume it with trainer.grad_clip set (e.g. 1.0), ")
                + "or start a new run with a lower optim.lr."
            )
        return train_loss, float(error_sum) / max(count, 1)

    def _kept_checkpoint(self) -> str:
        last = self.checkpoint_dir / "last.pt"
        return f"the last good checkpoint ({last}) is kept" if last.exists() else "no checkpoint had been written yet"

    def _set_warmup_lr(self, step: int) -> None:
        """Linear warm-up from base_lr / warmup_steps to base_lr."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * (step + 1) / self.warmup_steps

    @torch.no_grad()
    def _validate(self) -> float:
        self.evaluated.eval()
        self.context.broadcast_buffers(self.evaluated)
        device = next(self.model.parameters()).device
        error_sum = torch.zeros((), device=device, dtype=torch.float64)
        count = 0
        for batch in self.val_batches:
            with precision_context(device.type, self.precision):
                output = self.eval_forward(batch)
            error_sum += self.normalizer.validation_errors(output.double(), batch.targets.double()).sum()
            count += batch.num_graphs
        totals = self.context.all_reduce_sum(torch.stack([error_sum, torch.tensor(float(count), device=device, dtype=torch.float64)]))
        return float(totals[0]) / max(float(totals[1]), 1.0)


class _Deadline:
    """trainer.max_minutes of one launch, from `started` (time.monotonic(); None: now): `passed` once another epoch, as
    long as the longest so far, would end past it (never for None minutes). Under torchrun, the ranks agree: one rank's
    deadline stops them all."""

    def __init__(self, minutes, context: DistributedContext, started: float | None = None):
        self.minutes = None if minutes is None else float(minutes)
        self.context = context
        self.started = time.monotonic() if started is None else started
        self.longest_epoch = 0.0
        self.passed = False

    def after_epoch(self, seconds: float) -> None:
        if self.minutes is None:
            return
        self.longest_epoch = max(self.longest_epoch, seconds)
        late = time.monotonic() - self.started + self.longest_epoch > 60.0 * self.minutes
        self.passed = bool(self.context.all_reduce_sum(torch.tensor(float(late), device=self.context.device)).item())


def _forwards(model: torch.nn.Module, evaluated: torch.nn.Module, context: DistributedContext, compile_model: bool):
    """(training forward of `model`, evaluation forward of `evaluated`): DDP-wrapped for training under torchrun, compiled if asked."""

    def compiled(module: torch.nn.Module):
        return torch.compile(module, dynamic=True) if compile_model else module

    eval_forward = compiled(evaluated)
    if context.enabled:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        return compiled(torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)), eval_forward
    return (eval_forward if evaluated is model else compiled(model)), eval_forward


def _renamed_fields(train_state: dict) -> dict:
    """A saved TrainState with fields renamed since: best_val_mae became best_val_score."""
    state = dict(train_state)
    if "best_val_mae" in state:
        state["best_val_score"] = state.pop("best_val_mae")
    return state


def _as_tuple(value):
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # set either way: a sweep's jobs share one process
