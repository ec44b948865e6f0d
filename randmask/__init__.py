"""randmask: reproduce, probe and extend Random Mask (Defective Convolutional Networks)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562): importing a light submodule such as randmask.core.set_schema
# (the human study does) then does not pull in torch through randmask.core.models.
_LAZY = {
    "CheckpointError": "randmask.core.errors", "DataError": "randmask.core.errors", "NotationError": "randmask.core.errors",
    "RandmaskError": "randmask.core.errors",
    "build_model": "randmask.core.models", "list_models": "randmask.core.models", "register_model": "randmask.core.models",
    "ModelSpec": "randmask.core.notation", "canonical": "randmask.core.notation", "format_model": "randmask.core.notation",
    "parse_model": "randmask.core.notation", "ModelRef": "randmask.core.notation", "format_ref": "randmask.core.notation",
    "parse_ref": "randmask.core.notation",
}

__all__ = [
    "CheckpointError", "DataError", "ModelRef", "ModelSpec", "NotationError", "RandmaskError", "__version__",
    "build_model", "canonical", "format_model", "format_ref", "list_models", "parse_model", "parse_ref",
    "register_model",
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
