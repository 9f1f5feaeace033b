"""Composing the real packaged Hydra configs in tests, as the CLIs do."""

from __future__ import annotations

from importlib.resources import files

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

# Every packaged `experiment=` overlay, by name.
EXPERIMENTS = sorted(p.name.removesuffix(".yaml") for p in files("crystal_train.configs").joinpath("experiment").iterdir() if p.name.endswith(".yaml"))


def compose_config(config_name: str, overrides: list[str]):
    """The composed `train`, `eval` or `predict` config with the given overrides."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="crystal_train.configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
