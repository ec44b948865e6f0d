"""Checkpoints: one folder per model with `config.json` and `model.safetensors` (weights and masks).

Loading never unpickles: the structure is rebuilt from the JSON config, the tensors come from safetensors,
and every mismatch (missing file, corrupt bytes, wrong keys or shapes, masks that are not the recorded seed's)
is a CheckpointError that names the problem.

`config.json` follows a typed schema (`validate_config`): regular file of at most MAX_CONFIG_BYTES, strict JSON
(no NaN, no duplicate keys), the fields in SCHEMA with their types and ranges, a notation that parses and
names the same `arch`, and a model small enough to build. Weights must hold exactly the model's tensors, with
its shapes, a float dtype for float tensors (bool for masks, int64 for counters), only finite values and
no negative BatchNorm running variance.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from randmask import __version__
from randmask.core import safe_files
from randmask.core.architectures import ARCHITECTURES
from randmask.core.datasets import DATASETS
from randmask.core.errors import CheckpointError, RandmaskError
from randmask.core.masks import RandomMask
from randmask.core.models import MAX_SEED, MAX_WIDTH, ModelConfig, build_model, check_buildable
from randmask.core.notation import ModelSpec, parse_model

FORMAT = "randmask-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
REQUIRED = ("format", "format_version", "notation", "arch", "dataset", "width", "mask_seed", "seed")
MAX_CONFIG_BYTES = 1 << 20  # the zoo's largest config.json (40 epochs of history) is about 11 kB
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")
MAX_TRAIN_SECONDS = 1e9  # 31 years: bounded, so an EN's sum over its members stays finite
# safetensors dtype codes a tensor may have, by the dtype the model holds it in
_FILE_DTYPES = {torch.float32: ("F32", "F16", "BF16", "F64"), torch.bool: ("BOOL",), torch.int64: ("I64",)}


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parents[1],
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
        raise RandmaskError("model has no .config: build it with randmask.core.models.build_model")
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
    try:  # strict JSON, as the loader reads it: a NaN or infinity is refused before anything is written
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise RandmaskError(f"{folder}: config has a NaN or infinite number: "
                            f"{sorted(k for k, v in meta.items() if isinstance(v, float) and not math.isfinite(v))}"
                            ) from None
    _atomic_write_bytes(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    _atomic_write_bytes(folder / CONFIG_FILE, lambda p: p.write_text(text))
    return folder


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes. Devices, FIFOs and sockets
    are refused without blocking (O_NONBLOCK) and the size is checked before anything is read."""
    try:
        return safe_files.read_regular_file(path, limit, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot open {path}: {exc.strerror}") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:  # int() of a long digit string is slow, and no field needs one
        raise ValueError(f"integer with {len(text)} digits")
    return int(text)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_strictly(data: bytes, path: Path) -> object:
    """JSON without NaN/Infinity, duplicate keys or huge integers; any problem is one CheckpointError line."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_json_int,
                          object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not valid JSON: not UTF-8 text") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class CheckpointConfig:
    """The fields of config.json that loading relies on, checked (validate_config builds it)."""

    format_version: int
    notation: str
    arch: str
    dataset: str
    width: int
    mask_seed: int
    seed: int
    spec: ModelSpec
    weights_dtype: str | None = None
    clean_accuracy: float | None = None


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _show(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def validate_config(config: object, where: str | Path) -> CheckpointConfig:
    """Check a parsed config.json against the schema; raise one CheckpointError line naming the field."""
    def bad(field: str, value: object, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: {field} is {_show(value)}, expected {expected}")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a randmask checkpoint config (missing format={FORMAT!r})")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}")
    version = config["format_version"]
    if _int_in(version, FORMAT_VERSION + 1, 10**30):
        raise CheckpointError(f"{where} has format version {version}; this code reads up to {FORMAT_VERSION}: "
                              f"update randmask")
    if not _int_in(version, 1, FORMAT_VERSION):
        raise bad("format_version", version, f"an integer from 1 to {FORMAT_VERSION}")
    for field in ("notation", "arch", "dataset"):
        if not isinstance(config[field], str):
            raise bad(field, config[field], "text")
    if config["dataset"] not in DATASETS:
        raise bad("dataset", config["dataset"], f"one of {', '.join(DATASETS)}")
    if config["arch"] not in ARCHITECTURES:
        raise bad("arch", config["arch"], f"one of {', '.join(ARCHITECTURES)}")
    if not _int_in(config["width"], 1, MAX_WIDTH):
        raise bad("width", config["width"], f"an integer from 1 to {MAX_WIDTH}")
    for field in ("mask_seed", "seed"):
        if not _int_in(config[field], 0, MAX_SEED):
            raise bad(field, config[field], f"an integer from 0 to {MAX_SEED}")
    dtype = config.get("weights_dtype")
    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise bad("weights_dtype", dtype, f"one of {', '.join(WEIGHT_DTYPES)}")
    accuracy = config.get("clean_accuracy")
    if accuracy is not None and not (isinstance(accuracy, int | float) and not isinstance(accuracy, bool)
                                     and math.isfinite(accuracy) and 0 <= accuracy <= 1):
        raise bad("clean_accuracy", accuracy, "a number from 0 to 1 or null")
    seconds = config.get("train_time_s")
    if seconds is not None and not (isinstance(seconds, int | float) and not isinstance(seconds, bool)
                                    and 0 <= seconds <= MAX_TRAIN_SECONDS):
        raise bad("train_time_s", seconds, f"a number of seconds from 0 to {MAX_TRAIN_SECONDS:.0e} or null")
    if not isinstance(config.get("role", ""), str):
        raise bad("role", config["role"], "text")
    try:
        spec = parse_model(config["notation"])
        if spec.arch != config["arch"]:
            raise CheckpointError(f"{where}: arch {config['arch']!r} does not match notation "
                                  f"{config['notation']!r}, which is a {ARCHITECTURES[spec.arch].name}")
        check_buildable(spec, config["dataset"], config["width"])
    except CheckpointError:
        raise
    except RandmaskError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return CheckpointConfig(version, config["notation"], config["arch"], config["dataset"], config["width"],
                            config["mask_seed"], config["seed"], spec, dtype,
                            None if accuracy is None else float(accuracy))


def read_config(folder: str | Path) -> dict:
    """config.json of a checkpoint folder, validated against the schema (see validate_config)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    path = folder / CONFIG_FILE
    config = parse_json_strictly(read_regular_file(path, MAX_CONFIG_BYTES), path)
    validate_config(config, path)
    return config


def _read_tensors(path: Path, expected: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the model's state dict before and after reading:
    the same keys, shapes, a dtype of the same kind, and finite values once cast to the model's dtype."""
    info = path.stat() if path.exists() else None
    if info is None:
        raise CheckpointError(f"{path.parent} has no {path.name}")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    # the largest honest file holds every tensor in float64, plus its JSON header
    limit = sum(8 * v.numel() for v in expected.values()) + (1 << 20)
    if info.st_size > limit:
        raise CheckpointError(f"{path} is {info.st_size:,} bytes, more than {what} can hold ({limit:,})")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
            if missing or unexpected:
                raise CheckpointError(f"{path} does not match {what}: "
                                      f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                                      f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
            for key in sorted(keys):
                piece, want = f.get_slice(key), expected[key]
                if tuple(piece.get_shape()) != tuple(want.shape):
                    raise CheckpointError(f"{path}: {key} has shape {tuple(piece.get_shape())}, {what} expects "
                                          f"{tuple(want.shape)}")
                allowed = _FILE_DTYPES.get(want.dtype, ())
                if piece.get_dtype() not in allowed:
                    raise CheckpointError(f"{path}: {key} is stored as {piece.get_dtype()}, expected "
                                          f"{' or '.join(allowed) or want.dtype}")
            tensors = {key: f.get_tensor(key).to(expected[key].dtype) for key in sorted(keys)}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path} is corrupt or truncated: {' '.join(str(exc).split())}") from None
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {key} has {bad} NaN or infinite value(s)")
        if key.endswith("running_var") and (value < 0).any():  # a variance: sqrt of it would be NaN
            raise CheckpointError(f"{path}: {key} has {int((value < 0).sum())} negative value(s); "
                                  f"a BatchNorm variance is never below 0")
    return tensors


def load_model(folder: str | Path, device: str | torch.device | None = None,
               verify_masks: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild a model from its folder; returns (model in eval mode, config dict)."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        model = build_model(config["notation"], dataset=config["dataset"], width=config["width"],
                            mask_seed=config["mask_seed"], seed=config["seed"])
    except RandmaskError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {exc}") from exc
    path = folder / WEIGHTS_FILE
    expected = model.state_dict()
    tensors = _read_tensors(path, expected, f"{config['notation']!r} at width {config['width']}")
    if verify_masks:
        for name, module in model.named_modules():
            if isinstance(module, RandomMask) and not torch.equal(tensors[f"{name}.mask"], module.mask):
                raise CheckpointError(f"{path}: mask {name} is not the one drawn from mask seed "
                                      f"{config['mask_seed']} for {config['notation']!r}")
    model.load_state_dict(tensors)
    model.eval()
    if device is not None:
        model.to(device)
    return model, config


def load_any(model: str | Path, device: str | torch.device | None = None, *, untrained: bool = False,
             **build_kwargs) -> tuple[nn.Module, dict]:
    """A checkpoint folder; or, only when `untrained` is set, a notation built untrained (its config says
    `trained: False`). A bare notation without the flag is refused: it would quietly evaluate random weights."""
    text = str(model)
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    try:
        is_folder = Path(text).is_dir() or os.sep in text or (Path(text) / CONFIG_FILE).exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        is_folder = False
    if is_folder:
        return load_model(text, device)
    try:
        spec = parse_model(text)
    except RandmaskError as exc:
        raise CheckpointError(f"{shown} is not a checkpoint folder, nor a model notation: {exc}") from None
    if not untrained:
        raise CheckpointError(f"{shown} is not a checkpoint folder; to use an UNTRAINED {spec} built from the "
                              f"notation, pass --untrained")
    built = build_model(spec, **build_kwargs).eval()
    if device is not None:
        built.to(device)
    return built, {**built.config.to_dict(), "trained": False}
