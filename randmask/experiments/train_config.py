"""What a training run is: its settings (TrainConfig), the two presets and `make_config`, which joins a preset and a
user's overrides; then the precision a config's 'auto' resolves to on this machine (`training_precision`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from randmask.core import safe_files
from randmask.core.device import PrecisionChoice, choose_precision, cpu_has_fast_bf16, cpu_model
from randmask.core.errors import RandmaskError
from randmask.core.models import build_model
from randmask.core.notation import format_model, parse_model
from randmask.core.settings import precision_cache_path


@dataclass(frozen=True)
class TrainConfig:
    notation: str = "Normal ResNet-18"
    dataset: str = "cifar10"
    width: int = 16
    epochs: int = 15
    batch_size: int = 128  # global batch (split across DDP processes)
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step": lr/10 at each milestone epoch; "onecycle": linear up to lr then down to 0
    milestones: tuple[int, ...] = (150, 250)
    warmup: float = 0.2  # onecycle: share of steps spent rising
    label_smoothing: float = 0.0
    augment: bool = True  # pad-4 random crop + horizontal flip (crop only for MNIST)
    precision: str = "auto"  # auto = bf16 autocast where the hardware runs it natively and it measures faster
    channels_last: bool = False  # NHWC activations: 1.3-2.2x faster CPU training here (bench/bench_core.py)
    seed: int = 0  # initialisation and data order
    mask_seed: int = 0
    train_n: int | None = None  # first n training images only (tests, smoke runs)
    eval_n: int | None = None  # test images used to measure accuracy (None = the whole test set)
    log_every: int = 20  # steps between JSON-lines progress records
    preset: str = "custom"

    def __post_init__(self) -> None:
        if self.schedule not in ("step", "onecycle"):
            raise RandmaskError(f"schedule must be 'step' or 'onecycle', not {self.schedule!r}")
        for name in ("epochs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise RandmaskError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RandmaskError(f"lr must be a positive finite number, got {self.lr}")
        for name, low, high in (("momentum", 0.0, 1.0), ("label_smoothing", 0.0, 1.0), ("warmup", 0.0, 1.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value < high):
                raise RandmaskError(f"{name} must be in [{low:g}, {high:g}), got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise RandmaskError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("train_n", "eval_n"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RandmaskError(f"{name} must be at least 1 (or unset for all images), got {getattr(self, name)}")
        if self.channels_last and self.width < MIN_CHANNELS_LAST_WIDTH:
            raise RandmaskError(f"channels_last needs width >= {MIN_CHANNELS_LAST_WIDTH}, got {self.width}: torch "
                                "2.14's CPU kernels hang or corrupt the heap on ResNet-18 at width 4 with it")


PRESETS: dict[str, dict] = {
    # appendix D: SGD 0.9, wd 5e-4, batch 128, lr 0.1 /10 at epochs 150 and 250, 350 epochs, crop + flip
    "paper": dict(width=64, epochs=350, lr=0.1, schedule="step", milestones=(150, 250), precision="fp32"),
    # a 2-core CPU: narrow net, one-cycle schedule, label smoothing, NHWC; see README "Model zoo" for the numbers
    "quick": dict(width=16, epochs=40, lr=0.2, nesterov=True, schedule="onecycle", label_smoothing=0.1,
                  channels_last=True),
}
MIN_CHANNELS_LAST_WIDTH = 8  # width 4 with channels_last hangs or aborts in torch 2.14.1 (CPU); 8, 12, 16 train


def make_config(notation: str, preset: str = "quick", **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise RandmaskError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise RandmaskError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("channels_last") is None and settings.get("width", 16) < MIN_CHANNELS_LAST_WIDTH:
        settings["channels_last"] = False  # the preset's layout, not a user's explicit choice
    return TrainConfig(notation=format_model(parse_model(notation)), preset=preset, **settings)


def asdict_json(cfg: TrainConfig) -> dict:
    """The config as plain JSON types (tuples become lists), as checkpoints record it."""
    return json.loads(json.dumps(asdict(cfg)))


_PRECISION_PROBES: dict[tuple, PrecisionChoice] = {}


def _stored_probes() -> dict:
    try:
        stored = json.loads(precision_cache_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: probe again
        return {}
    return stored if isinstance(stored, dict) else {}


def _store_probe(key: str, choice: PrecisionChoice) -> None:
    path = precision_cache_path()
    stored = {**_stored_probes(), key: {"dtype": "bfloat16" if choice.dtype else "fp32", "reason": choice.reason}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        safe_files.replace_text(path, json.dumps(stored, indent=1))
    except OSError:  # a read-only cache only costs the next run its probe
        pass


def training_precision(cfg: TrainConfig, device: torch.device, world: int = 1) -> PrecisionChoice:
    """The autocast dtype `cfg.precision` resolves to for this model here, and why (`choose_precision`). Where
    the hardware does not settle it, 'auto' on a CPU times one training step of a throw-away copy of the model
    (same width, layout and per-process batch) in bf16 and in fp32 (~7 s of CPU time at width 16): the answer is
    remembered per process for each such shape, and across runs in settings.precision_cache_path() for this CPU
    and torch version (the probe counts CPU time, which other processes' load hardly moves)."""
    if cfg.precision != "auto" or device.type != "cpu" or not cpu_has_fast_bf16():
        return choose_precision(device, cfg.precision)
    batch = max(1, cfg.batch_size // world)
    spec = parse_model(cfg.notation)
    key = (format_model(spec.member()), cfg.dataset, cfg.width, batch, cfg.channels_last, torch.get_num_threads())
    stored_key = json.dumps([*key, cpu_model(), torch.__version__])
    if key not in _PRECISION_PROBES:
        stored = _stored_probes().get(stored_key)
        if isinstance(stored, dict) and stored.get("dtype") in ("bfloat16", "fp32"):
            _PRECISION_PROBES[key] = PrecisionChoice(
                torch.bfloat16 if stored["dtype"] == "bfloat16" else None,
                f"{stored.get('reason', '')}; measured by an earlier run on this CPU (kept in "
                f"{precision_cache_path()}: delete it to probe again)")
    if key not in _PRECISION_PROBES:
        with torch.random.fork_rng(devices=[]):  # the probe must not move the training's random streams
            torch.manual_seed(0)
            model = build_model(spec.member(), dataset=cfg.dataset, width=cfg.width).to(device).train()
            x = torch.rand(batch, *model.pixel_mean.shape, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)

            def step(dtype: torch.dtype | None) -> None:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x).float(), y)
                model.zero_grad(set_to_none=True)
                loss.backward()

            _PRECISION_PROBES[key] = choose_precision(device, "auto", probe=step)
            _store_probe(stored_key, _PRECISION_PROBES[key])
    return _PRECISION_PROBES[key]
