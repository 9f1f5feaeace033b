"""Crystal-train checkpoints: plain tensors and containers, written atomically, loaded safely."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from crystal_train.atomic_file import atomic_torch_save, remove_unfinished_writes
from crystal_train.data.dataset import graph_settings
from crystal_train.data.graphs import GRAPH_VERSION, graph_changes_since

CHECKPOINT_FORMAT = "crystal-train-checkpoint"
CHECKPOINT_VERSION = 1

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, **contents) -> None:
    """Atomically write a checkpoint (model/optimizer/scheduler states, config, normaliser...)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **contents}, Path(path))


def recover_interrupted_saves(checkpoint_dir: Path, last: dict) -> None:
    """Before resuming from `last` (last.pt), undo what a kill during checkpoint writes left behind.

    Each epoch writes last.pt and then, if it improved, best.pt. A kill between the two leaves a
    last.pt that is itself the best epoch beside an older best.pt: best.pt is rewritten from it.
    Temporary files of a write cut short are removed.
    """
    checkpoint_dir = Path(checkpoint_dir)
    for leftover in remove_unfinished_writes(checkpoint_dir):
        log.info("Removed %s, left by a checkpoint write that was cut short", leftover)
    state = last["train_state"]
    best_path = checkpoint_dir / "best.pt"
    best_epoch_on_disk = load_checkpoint(best_path)["train_state"]["epoch"] if best_path.exists() else None
    if best_epoch_on_disk == state["best_epoch"]:
        return
    if state["best_epoch"] == state["epoch"]:
        atomic_torch_save(last, best_path)
        log.info("Rewrote %s from last.pt: the run stopped before saving its best epoch %d", best_path, state["best_epoch"])
    else:
        log.warning(
            "%s holds epoch %s, not the best epoch %d recorded in last.pt, whose weights are gone; "
            "the final scores use it unless a later epoch improves on epoch %d",
            best_path, best_epoch_on_disk, state["best_epoch"], state["best_epoch"],
        )


ORIGINAL_CGCNN_HINT = "an original CGCNN *.pth.tar needs atom_init=PATH to be converted"


def load_checkpoint(path: Path, map_location="cpu", original_cgcnn_hint: str = ORIGINAL_CGCNN_HINT) -> dict:
    """Load a crystal-train checkpoint with weights_only=True; clear error for anything else (ending with
    `original_cgcnn_hint` for a file torch cannot load)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        inside = path / "checkpoints" / "best.pt" if (path / "checkpoints").is_dir() else path / "best.pt"
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint" + (f": did you mean {inside}?" if inside.is_file() else ""))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a crystal-train checkpoint ({type(error).__name__}); {original_cgcnn_hint}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a crystal-train checkpoint")
    return checkpoint


def trained_graph_version(checkpoint: dict) -> int:
    """The graph version the checkpoint was trained on; checkpoints from before the record hold version 1."""
    return int(checkpoint.get("graph_version", 1))


def warn_if_other_graphs(checkpoint: dict, path: Path) -> None:
    """Log when the checkpoint was trained on graphs other than those this crystal-train builds."""
    trained_on = trained_graph_version(checkpoint)
    if trained_on > GRAPH_VERSION:
        log.warning(
            "%s was trained by a newer crystal-train, on graphs of version %d; this one builds version %d, so the graphs "
            "of some crystals may differ from those it trained on: upgrade crystal-train to use it as trained",
            path, trained_on, GRAPH_VERSION,
        )
        return
    changes = graph_changes_since(trained_on, graph_settings(checkpoint["config"]["graph"]))
    if changes:
        log.warning(
            "%s was trained on graphs of version %d; this crystal-train builds version %d (%s), so the graphs of "
            "some crystals, and their predictions, differ from those it trained on",
            path, trained_on, GRAPH_VERSION, "; ".join(changes),
        )


def model_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """Rebuild the model from the checkpoint's config and load its weights."""
    model = hydra.utils.instantiate(OmegaConf.create(checkpoint["config"]["model"]), **element_table(checkpoint))
    model.load_state_dict(checkpoint["model_state"])
    return model


def element_table(checkpoint: dict) -> dict:
    """The model argument that gives it the checkpoint's element table, which decides its input width (e.g. an
    imported atom_init.json); none for a model without one."""
    state = checkpoint["model_state"]
    return {"atom_features": state["atom_features"]} if "atom_features" in state else {}


def trained_precision(checkpoint: dict) -> str:
    """The trainer.precision the checkpoint was trained and validated in ("32" when unset)."""
    return str(checkpoint["config"].get("trainer", {}).get("precision", "32"))


def load_model(path: Path, atom_init: str | None = None) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, model) from a crystal-train checkpoint or an original CGCNN *.pth.tar."""
    path = Path(path)
    if path.name.endswith(".pth.tar"):
        from crystal_train.models.cgcnn_import import convert_reference_checkpoint

        if atom_init is None:
            raise ValueError(f"{path} is an original CGCNN checkpoint: pass atom_init=PATH/atom_init.json too")
        checkpoint = convert_reference_checkpoint(path, Path(atom_init))
    else:
        checkpoint = load_checkpoint(path)
        warn_if_other_graphs(checkpoint, path)
    return checkpoint, model_from_checkpoint(checkpoint)
