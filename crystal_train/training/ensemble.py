"""Several checkpoints of one target used as one model: the mean of their predictions and their spread.

`crystal-eval` and `crystal-predict` take `ckpt=[a.pt,b.pt,...]`; a single checkpoint is an
ensemble of one, so both tools have one code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import ListConfig

from crystal_train.data.dataset import graph_settings
from crystal_train.data.features import model_elements
from crystal_train.data.loader import DeviceGraphs
from crystal_train.data.graphs import GraphSettings
from crystal_train.training.checkpoint import load_model, trained_precision
from crystal_train.training.inference import crystal_features, predict
from crystal_train.training.metrics import Normalizer
from crystal_train.training.tasks import ClassProbability, output_transform

log = logging.getLogger(__name__)


def checkpoint_paths(ckpt) -> list[Path]:
    """The checkpoint(s) a `ckpt=` setting names: one path, or a list `ckpt=[a.pt,b.pt]` of different files."""
    paths = [Path(str(p)).expanduser() for p in (ckpt if isinstance(ckpt, (list, tuple, ListConfig)) else [ckpt])]
    if not paths:
        raise ValueError("ckpt=[]: give at least one checkpoint")
    spelled: dict[Path, Path] = {}  # each file, as first written
    for path in paths:
        resolved = path.resolve()
        if resolved in spelled:
            raise ValueError(f"ckpt lists {spelled[resolved]} and {path}, the same file: an ensemble's checkpoints must differ")
        spelled[resolved] = path
    return paths


@dataclass
class Member:
    """One trained model with what it needs to predict in the target's units."""

    path: Path
    checkpoint: dict
    model: torch.nn.Module

    @property
    def transform(self) -> Normalizer | ClassProbability:
        """What its outputs mean: a regression's normaliser, or a classifier's probability of class 1."""
        return output_transform(self.checkpoint["normalizer"])

    @property
    def target(self) -> tuple[str | None, str | None, str]:
        """(target, units, task)."""
        return self.checkpoint.get("target"), self.checkpoint.get("units"), self.transform.task

    @property
    def settings(self) -> GraphSettings:
        return graph_settings(self.checkpoint["config"]["graph"])

    @property
    def data(self) -> str:
        """What it trained on, as far as its config tells: the source (its file name), a demo's size or a subset, and
        the data.seed that generates the demo's crystals or draws the subset."""
        data = self.checkpoint["config"].get("data", {})
        snapshot = data.get("snapshot")
        source = Path(str(snapshot)).name if snapshot is not None else str(data.get("source", "materials_project"))
        drawn = source == "demo" or data.get("limit") is not None
        return (
            source + (f", {data.get('num_crystals')} crystals" if source == "demo" else "")
            + (f", data.limit={data['limit']}" if data.get("limit") is not None else "")
            + (f", data.seed={data.get('seed', 0)}" if drawn else "")
        )


class Ensemble:
    """Checkpoints of the same target and graph settings, predicting their mean; one checkpoint is the plain model."""

    def __init__(self, members: list[Member]):
        first = members[0]
        for member in members[1:]:
            for what in ("target", "settings"):
                if getattr(member, what) != getattr(first, what):
                    raise ValueError(
                        f"{member.path} has {_describe(what, member)} but {first.path} has {_describe(what, first)}: "
                        "the checkpoints of an ensemble must share their target and graph settings"
                    )
        self.members = members
        trained_on = {member.data for member in members}
        if len(trained_on) > 1:
            log.warning(
                "The checkpoints trained on different data (%s): their mean mixes models that learnt from different crystals",
                "; ".join(f"{member.path}: {member.data}" for member in members),
            )

    @classmethod
    def load(cls, paths: list[Path], device: torch.device, atom_init: str | None = None) -> Ensemble:
        """Load each checkpoint (crystal-train's or an original CGCNN one) onto `device`."""
        members = []
        for path in paths:
            checkpoint, model = load_model(path, atom_init=atom_init)
            members.append(Member(path, checkpoint, model.to(device)))
        return cls(members)

    @property
    def checkpoint(self) -> dict:
        """The first checkpoint: its config, data and split stand for the ensemble's."""
        return self.members[0].checkpoint

    @property
    def name(self) -> str:
        kinds = sorted({type(member.model).__name__ for member in self.members})
        return kinds[0] if len(self.members) == 1 else f"ensemble of {len(self.members)} ({', '.join(kinds)})"

    @property
    def task(self) -> str:
        """regression or classification, as every member's (they must share their target)."""
        return self.members[0].transform.task

    @property
    def uses_distinct_distances(self) -> bool:
        """Whether a member computes from each crystal's distinct distances (DeviceGraphs' distinct_distances)."""
        return any(getattr(member.model, "uses_distinct_distances", False) for member in self.members)

    def elements(self) -> frozenset[int]:
        """The elements every member can featurise."""
        return frozenset.intersection(*(model_elements(member.model) for member in self.members))

    def training_elements(self) -> list[int] | None:
        """Elements every member's training split held; None when a member does not record them."""
        recorded = [member.checkpoint.get("training_elements") for member in self.members]
        if any(elements is None for elements in recorded):
            return None
        return sorted(set.intersection(*(set(elements) for elements in recorded)))

    def training_element_counts(self) -> dict[int, int] | None:
        """{atomic number: training crystals holding it}, when every member records the same counts (one training split);
        else None."""
        recorded = [member.checkpoint.get("training_element_counts") for member in self.members]
        return recorded[0] if recorded[0] is not None and all(counts == recorded[0] for counts in recorded) else None

    def member_predictions(self, graphs: DeviceGraphs, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """(members, crystals) predictions in the target's units, each member in the precision it was trained in."""
        return np.stack([
            predict(member.model, graphs, indices, member.transform, batch_size, trained_precision(member.checkpoint))
            for member in self.members
        ])

    def crystal_features(self, graphs: DeviceGraphs, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """(crystals, width) feature vectors that the one member's output head reads (`check_one_model` first)."""
        self.check_one_model("crystal features")
        member = self.members[0]
        return crystal_features(member.model, graphs, indices, batch_size, trained_precision(member.checkpoint))

    def check_one_model(self, what: str) -> None:
        """ValueError unless the ensemble is one checkpoint: each model's features mean something else, so theirs are
        neither averaged nor comparable."""
        if len(self.members) > 1:
            raise ValueError(f"{what} are one model's: give one checkpoint, not {len(self.members)}")

    def combine(self, member_predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The ensemble's predictions (the members' mean, floored at the highest of their targets' lower bounds: a
        member trained before data.target_min existed has none) and spread (their sample standard deviation; None for
        one member)."""
        spread = member_predictions.std(axis=0, ddof=1) if len(member_predictions) > 1 else None
        mean = member_predictions.mean(axis=0)
        return (mean if self.minimum is None else mean.clip(self.minimum, None)), spread

    @property
    def minimum(self) -> float | None:
        """The highest of the members' lower bounds of the target (data.target_min), None where none has one."""
        floors = [member.transform.minimum for member in self.members if getattr(member.transform, "minimum", None) is not None]
        return max(floors) if floors else None


def _describe(what: str, member: Member) -> str:
    if what == "target":
        target, units, task = member.target
        return f"target {target} ({units}, {task})"
    settings = member.settings
    return f"graph settings cutoff {settings.cutoff} Å, max_neighbors {settings.max_neighbors}"
