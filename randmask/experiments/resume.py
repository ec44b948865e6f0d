"""Resuming a training run: after each epoch the loop saves everything it needs to go on (resume.pt, replaced
atomically); a later run with the same config checks that file before using any of it, then restores it."""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from randmask.core import safe_files
from randmask.core.errors import CheckpointError, RandmaskError
from randmask.experiments.train_config import TrainConfig, asdict_json

RESUME_FILE = "resume.pt"
RESUME_LIMIT = 4 << 30  # bytes: a paper-width ResNet-18 with its momentum buffers is about 90 MB
AUTOCAST_NAMES = ("fp32", "bfloat16", "float16")


def damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable resume file ({why}); delete it to start this run afresh, "
                           f"or pass a new --out")


def read_resume(path: Path, cfg: TrainConfig) -> dict:
    """The state in `path` (resume.pt), checked before any of it is used. Loaded with `weights_only=True` (never
    unpickling anything but tensors and plain values); any damage is one CheckpointError naming the file and
    how to start afresh (torch's own message would advise turning weights_only off, which must never be done)."""
    try:
        data = safe_files.read_regular_file(path, RESUME_LIMIT, lambda why: damaged(path, why))
    except OSError as exc:
        raise damaged(path, exc.strerror or type(exc).__name__) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise damaged(path, "it holds objects other than tensors and plain values") from None
    except Exception as exc:  # torch raises many kinds (RuntimeError, EOFError, zip errors) for a broken file
        raise damaged(path, f"truncated or not written by torch.save: {type(exc).__name__}") from None
    kinds = {"config": dict, "epoch": int, "model": dict, "optimizer": dict, "rng_torch": torch.Tensor,
             "train_time_s": (int, float), "history": list}
    if not isinstance(state, dict):
        raise damaged(path, f"it holds a {type(state).__name__}, not a training state")
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise damaged(path, f"{key!r} is missing or of the wrong type")
    if state["config"] != asdict_json(cfg):
        raise RandmaskError(f"{path} was written by a different training config; use another --out or delete it")
    if not 1 <= state["epoch"] <= cfg.epochs or len(state["history"]) != state["epoch"]:
        raise damaged(path, f"epoch {state['epoch']} with {len(state['history'])} records, of {cfg.epochs} epochs")
    if not (math.isfinite(state["train_time_s"]) and state["train_time_s"] >= 0):
        raise damaged(path, f"training time {state['train_time_s']}")
    if "autocast" in state and state["autocast"] not in AUTOCAST_NAMES:
        raise damaged(path, f"unknown precision {str(state['autocast'])[:40]!r}")
    bad = [k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)
           or (v.is_floating_point() and not torch.isfinite(v).all())]
    if bad:
        raise damaged(path, f"weight {str(bad[0])[:80]!r} is not a finite tensor")
    return state


def restore(state: dict, path: Path, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a checked state (`read_resume`) into the fresh model and optimizer; one that does not fit them is
    refused before anything is written."""
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise damaged(path, f"it does not fit {cfg.notation}: {type(exc).__name__}") from None


def save_resume(path: Path, cfg: TrainConfig, epoch: int, model: nn.Module, opt: torch.optim.Optimizer,
                train_time: float, history: list[dict], autocast: str) -> None:
    """The state after `epoch` epochs, written beside `path` and then moved over it: a crash leaves the last one."""
    state = {"config": asdict_json(cfg), "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng_torch": torch.get_rng_state(), "train_time_s": train_time, "history": history,
             "autocast": autocast}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
