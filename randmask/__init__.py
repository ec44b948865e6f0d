"""randmask: reproduce, probe and extend Random Mask (Defective Convolutional Networks)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562): importing a light submodule such as randmask.core.set_schema
# (the human study does) then does not pull in torch through randmask.core.models.
_HOMES = {
    "randmask.core.errors": ("CheckpointError", "DataError", "NotationError", "RandmaskError"),
    "randmask.core.models": ("build_model", "list_models", "register_model"),
    "randmask.core.notation": ("ModelSpec", "canonical", "format_model", "parse_model", "ModelRef", "format_ref",
                               "parse_ref"),
    "randmask.experiments.checkpoint": ("load_model",),
    "randmask.experiments.train": ("train",),
    "randmask.experiments.train_config": ("TrainConfig", "make_config"),
    "randmask.attacks": ("make_attack",),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [  # the names of _HOMES (tests/test_set_schema.py checks), literal for linters and IDEs
    "CheckpointError", "DataError", "ModelRef", "ModelSpec", "NotationError", "RandmaskError", "TrainConfig",
    "__version__", "build_model", "canonical", "format_model", "format_ref", "list_models", "load_model",
    "make_attack", "make_config", "parse_model", "parse_ref", "register_model", "train",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:  # also lets `from randmask import core` fall back to importing the subpackage
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ provides these
    from randmask.attacks import make_attack
    from randmask.core.errors import CheckpointError, DataError, NotationError, RandmaskError
    from randmask.core.models import build_model, list_models, register_model
    from randmask.core.notation import (
        ModelRef,
        ModelSpec,
        canonical,
        format_model,
        format_ref,
        parse_model,
        parse_ref,
    )
    from randmask.experiments.checkpoint import load_model
    from randmask.experiments.train import train
    from randmask.experiments.train_config import TrainConfig, make_config
