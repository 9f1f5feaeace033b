"""Original CGCNN checkpoints (github.com/txie-93/cgcnn ``*.pth.tar``) as crystal-train checkpoints.

The reference keeps the element table (``atom_init.json``) and the graph settings outside its
checkpoints. Its data loader's defaults (radius 8 Å, 12 neighbours, Gaussians from 0 to 8 Å in
steps of 0.2 Å, i.e. 41 edge features) are assumed and checked against the weights' shapes.
Regression checkpoints keep their one output; a binary classifier's two outputs (log-softmax over class 0 and
class 1) become one logit of class 1, the difference of the two, which gives the same probabilities.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from crystal_train.data.features import MAX_Z, load_atom_init_json
from crystal_train.data.graphs import GRAPH_VERSION
from crystal_train.models.cgcnn import CGCNN
from crystal_train.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

REFERENCE_GRAPH = {"cutoff": 8.0, "max_neighbors": 12}
REFERENCE_GAUSSIANS = {"gaussian_dmin": 0.0, "gaussian_dmax": 8.0, "gaussian_step": 0.2}
REFERENCE_EDGE_FEATURES = 41
MODEL_SIZES = ("atom_fea_len", "n_conv", "h_fea_len", "n_h")
REQUIRED_KEYS = ("state_dict", "normalizer", "args")
REQUIRED_WEIGHTS = ("embedding.weight", "convs.0.fc_full.weight", "conv_to_fc.weight", "fc_out.weight")
_TORCH_ADVICE = ("Weights only load failed", "(1)", "(2)", "Please file an issue", "Check the documentation")

_numpy_scalar = np.float64(0).__reduce__()[0]  # numpy's scalar constructor, whatever module holds it
# Besides tensors and containers, original checkpoints pickle their args as an argparse.Namespace
# (or a dict) and, in classification checkpoints, the best AUC as a numpy float64 scalar (named
# numpy.core... by numpy 1, numpy._core... by numpy 2).
SAFE_GLOBALS = [
    argparse.Namespace,
    _numpy_scalar,
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
]


def convert_reference_checkpoint(path: Path, atom_init: Path) -> dict:
    """A crystal-train checkpoint dict from a reference ``*.pth.tar`` (regression, or a binary classifier) and its atom_init.json."""
    path, atom_init = Path(path), Path(atom_init)
    raw = _load_reference(path)
    args = _args_dict(raw["args"], path)
    task = args.get("task", "regression")
    if task not in ("regression", "classification"):
        raise ValueError(f"{path} is a CGCNN {task} checkpoint: only regression and classification checkpoints can be imported")
    state = dict(raw["state_dict"])
    outputs = state["fc_out.weight"].shape[0]
    if outputs != (1 if task == "regression" else 2):
        raise ValueError(f"{path} is a {task} checkpoint with {outputs} outputs: expected 1 for regression, 2 for classification")
    if task == "classification":
        state["fc_out.weight"], state["fc_out.bias"] = _class_one_logit(state["fc_out.weight"], state["fc_out.bias"])
    missing = [name for name in MODEL_SIZES if not isinstance(args.get(name), int)]
    if missing:
        raise ValueError(f"{path}: args lack the model sizes {missing}")
    sizes = {name: args[name] for name in MODEL_SIZES}
    edge_features = state["convs.0.fc_full.weight"].shape[1] - 2 * sizes["atom_fea_len"]
    if edge_features != REFERENCE_EDGE_FEATURES:
        raise ValueError(
            f"{path} uses {edge_features} edge features, not the {REFERENCE_EDGE_FEATURES} of the reference defaults "
            "(radius 8 Å, Gaussians 0 to 8 Å in steps of 0.2 Å): a checkpoint trained with other graph settings cannot be imported"
        )
    state["atom_features"] = _element_table(atom_init, state["embedding.weight"].shape[1], path)
    model_cfg = {"_target_": "crystal_train.models.cgcnn.CGCNN", **sizes, **REFERENCE_GAUSSIANS}
    _check_weights(model_cfg, state, path)
    normalizer = raw["normalizer"]
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "graph_version": GRAPH_VERSION,  # gives the reference's predictions where the neighbours tied at its cap are equivalent
        "model_state": state,
        "normalizer": (
            {"mean": float(normalizer["mean"]), "std": float(normalizer["std"])} if task == "regression"
            else {"task": "classification", "positive_fraction": None}  # the reference records no class balance
        ),
        "config": {"model": model_cfg, "graph": dict(REFERENCE_GRAPH), "data": _data_config(task)},
        "target": "reference CGCNN target",
        "units": "",
        "source_checkpoint": str(path),
        "reference_args": args,
        "train_state": {"best_epoch": None if raw.get("epoch") is None else int(raw["epoch"])},
    }


def _class_one_logit(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, H) weight and (1,) bias of z1 - z0 from a two-class output layer: softmax(z)[1] = sigmoid(z1 - z0)."""
    return (weight[1] - weight[0]).unsqueeze(0), (bias[1] - bias[0]).unsqueeze(0)


def _load_reference(path: Path) -> dict:
    """The unpickled checkpoint (only allow-listed types), checked to have the reference's layout."""
    if not path.is_file():
        raise FileNotFoundError(f"CGCNN checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is not a CGCNN checkpoint that loads safely: not a PyTorch file, or it holds types other than "
            f"tensors, containers, argparse.Namespace and numpy floats ({type(error).__name__}: {_reason(error)})"
        ) from None
    if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_KEYS):
        raise ValueError(f"{path} is not a CGCNN checkpoint: expected a dict with keys {list(REQUIRED_KEYS)}")
    state = raw["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(state.get(name), torch.Tensor) for name in REQUIRED_WEIGHTS):
        raise ValueError(f"{path} is not a CGCNN checkpoint: its state_dict lacks {list(REQUIRED_WEIGHTS)}")
    normalizer = raw["normalizer"]
    if not isinstance(normalizer, dict) or not {"mean", "std"} <= normalizer.keys():
        raise ValueError(f"{path} is not a CGCNN checkpoint: its normalizer lacks mean and std")
    return raw


def _reason(error: Exception) -> str:
    """The informative line of a loading error, without its generic advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(_TORCH_ADVICE)]
    return lines[0][:300] if lines else ""


def _args_dict(args, path: Path) -> dict:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise ValueError(f"{path} is not a CGCNN checkpoint: its args are a {type(args).__name__}")


def _element_table(atom_init: Path, input_size: int, path: Path) -> torch.Tensor:
    """atom_init.json as a (MAX_Z + 1, F) table, the row count of crystal-train's own tables."""
    table = load_atom_init_json(atom_init)
    if table.shape[1] != input_size:
        raise ValueError(f"{atom_init} has {table.shape[1]} features per element but {path} expects {input_size}")
    if table.shape[0] > MAX_Z + 1:
        raise ValueError(f"{atom_init} lists elements beyond Z = {MAX_Z}, which crystal-train does not support")
    return torch.cat([table, table.new_zeros(MAX_Z + 1 - table.shape[0], table.shape[1])])


def _check_weights(model_cfg: dict, state: dict, path: Path) -> None:
    """Raise a ValueError naming the file unless the weights load strictly into the configured model."""
    options = {key: value for key, value in model_cfg.items() if key != "_target_"}
    model = CGCNN(**options, atom_features=state["atom_features"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not match the sizes in its args {options}: {error}") from None


def _data_config(task: str) -> dict:
    """configs/data/mp_formation.yaml with a placeholder target and the checkpoint's task: score with data.snapshot=PATH."""
    text = resources.files("crystal_train.configs").joinpath("data", "mp_formation.yaml").read_text()
    config = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    config.update(name="cgcnn_reference", target="target", units=None, snapshot=None, task=task)  # units follow data.target= when scored
    return config
