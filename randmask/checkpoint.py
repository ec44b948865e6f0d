"""Checkpoints: one folder per model with `config.json` and `model.safetensors` (weights and masks).

Loading never unpickles: the structure is rebuilt from the JSON config, the tensors come from safetensors,
and every mismatch (missing file, corrupt bytes, wrong keys or shapes, masks that are not the recorded seed's)
is a CheckpointError that names the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from randmask import __version__
from randmask.errors import CheckpointError, RandmaskError
from randmask.masks import RandomMask
from randmask.models import DATASETS, ModelConfig, build_model

FORMAT = "randmask-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
REQUIRED = ("format", "format_version", "notation", "arch", "dataset", "width", "mask_seed", "seed")


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, folder: str | Path, extra: dict | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors. `dtype=torch.float16` halves float weights (for shipping)."""
    config: ModelConfig | None = getattr(_unwrap(model), "config", None)
    if config is None:
        raise RandmaskError("model has no .config: build it with randmask.models.build_model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in _unwrap(model).state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point() and not key.endswith("pixel_mean"):
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **config.to_dict(),
            "weights_dtype": str(dtype or torch.float32).removeprefix("torch."),
            "code_version": code_version(), **(extra or {})}
    _atomic_write_bytes(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    _atomic_write_bytes(folder / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    return folder


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    path = folder / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a randmask checkpoint config (missing format={FORMAT!r})")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {config['format_version']}; this code reads "
                              f"up to {FORMAT_VERSION}: update randmask")
    if config["dataset"] not in DATASETS:
        raise CheckpointError(f"{path} names unknown dataset {config['dataset']!r}")
    return config


def load_model(folder: str | Path, device: str | torch.device | None = None,
               verify_masks: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild a model from its folder; returns (model in eval mode, config dict)."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        model = build_model(config["notation"], dataset=config["dataset"], width=int(config["width"]),
                            mask_seed=int(config["mask_seed"]), seed=int(config["seed"]))
    except RandmaskError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {exc}") from exc
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path} is corrupt or truncated: {exc}") from exc
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match {config['notation']!r} at width {config['width']}: "
                              f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the config's model expects "
                                  f"{tuple(expected[key].shape)}")
    if verify_masks:
        for name, module in model.named_modules():
            if isinstance(module, RandomMask) and not torch.equal(tensors[f"{name}.mask"], module.mask):
                raise CheckpointError(f"{path}: mask {name} is not the one drawn from mask seed "
                                      f"{config['mask_seed']} for {config['notation']!r}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.eval()
    if device is not None:
        model.to(device)
    return model, config


def load_any(model: str | Path, device: str | torch.device | None = None, **build_kwargs) -> tuple[nn.Module, dict]:
    """A checkpoint folder, or else a notation (built untrained, config says so)."""
    if Path(model).is_dir() or os.sep in str(model) or (Path(model) / CONFIG_FILE).exists():
        return load_model(model, device)
    built = build_model(str(model), **build_kwargs).eval()
    if device is not None:
        built.to(device)
    return built, {**built.config.to_dict(), "trained": False}
