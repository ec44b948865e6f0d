"""randmask: reproduce, probe and extend Random Mask (Defective Convolutional Networks)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562): importing a light submodule such as randmask.set_schema
# (the human study does) then does not pull in torch through randmask.models.
_LAZY = {
    "CheckpointError": "randmask.errors", "DataError": "randmask.errors", "NotationError": "randmask.errors",
    "RandmaskError": "randmask.errors",
    "build_model": "randmask.models", "list_models": "randmask.models", "register_model": "randmask.models",
    "ModelSpec": "randmask.notation", "canonical": "randmask.notation", "format_model": "randmask.notation",
    "parse_model": "randmask.notation", "ModelRef": "randmask.notation", "format_ref": "randmask.notation",
    "parse_ref": "randmask.notation",
}

__all__ = [
    "CheckpointError", "DataError", "ModelRef", "ModelSpec", "NotationError", "RandmaskError", "__version__",
    "build_model", "canonical", "format_model", "format_ref", "list_models", "parse_model", "parse_ref",
    "register_model",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:  # also lets `from randmask import zoo` fall back to importing the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ provides these
    from randmask.errors import CheckpointError, DataError, NotationError, RandmaskError
    from randmask.models import build_model, list_models, register_model
    from randmask.notation import (
        ModelRef,
        ModelSpec,
        canonical,
        format_model,
        format_ref,
        parse_model,
        parse_ref,
    )
