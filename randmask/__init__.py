"""randmask: reproduce, probe and extend Random Mask (Defective Convolutional Networks)."""

__version__ = "0.1.0"

from randmask.errors import CheckpointError, DataError, NotationError, RandmaskError  # noqa: E402
from randmask.models import build_model, list_models, register_model  # noqa: E402
from randmask.notation import ModelSpec, canonical, format_model, parse_model  # noqa: E402

__all__ = [
    "CheckpointError", "DataError", "ModelSpec", "NotationError", "RandmaskError", "__version__", "build_model",
    "canonical", "format_model", "list_models", "parse_model", "register_model",
]
