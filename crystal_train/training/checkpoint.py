"""Crystal-train checkpoints: plain tensors and containers, written atomically, loaded safely."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from crystal_train.data.cache import atomic_torch_save

CHECKPOINT_FORMAT = "crystal-train-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, **contents) -> None:
    """Atomically write a checkpoint (model/optimizer/scheduler states, config, normaliser...)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **contents}, Path(path))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a crystal-train checkpoint with weights_only=True; clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a crystal-train checkpoint ({type(error).__name__}); an original CGCNN "
            "*.pth.tar needs atom_init=PATH to be converted"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a crystal-train checkpoint")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """Rebuild the model from the checkpoint's config and load its weights."""
    model_cfg = OmegaConf.create(checkpoint["config"]["model"])
    state = checkpoint["model_state"]
    # The saved element table decides the model's input width (e.g. an imported atom_init.json).
    extra = {"atom_features": state["atom_features"]} if "atom_features" in state else {}
    model = hydra.utils.instantiate(model_cfg, **extra)
    model.load_state_dict(state)
    return model


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
    return checkpoint, model_from_checkpoint(checkpoint)
