"""Device and precision choices: CUDA when present, else CPU; bf16 autocast only where the CPU has it and a
short measured probe shows it pays."""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (CUDA runs asynchronously): for timing; a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_text(device: torch.device) -> str:
    """'CUDA · <GPU name>' or 'CPU': which device the app computes on, for its sidebar."""
    return f"CUDA · {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"


def cpu_fields(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo ('model name', 'cpu family', 'model', 'flags', ...); empty
    where there is none (not Linux)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # every core of a machine reports the same
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU as benchmarks name it beside their figures: 'AMD EPYC (family 26, model 2), 2 CPUs' on Linux
    (family and model tell CPU generations apart that share a marketing name), else what `platform` knows."""
    fields = cpu_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    family = f" (family {fields['cpu family']}, model {fields['model']})" if {"cpu family", "model"} <= fields.keys() \
        else ""
    return f"{name}{family}, {os.cpu_count()} CPUs"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """oneDNN reports native bf16 (AVX512-BF16 / AMX); without it bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str,
                   probe: Callable[[torch.dtype | None], None] | None = None) -> torch.dtype | None:
    """The autocast dtype for a precision setting ('auto', 'fp32', 'bf16', 'fp16'), or None for fp32.

    On a CPU, 'auto' needs native bf16 (oneDNN's report) and, when a `probe` is given (one training step in
    the given autocast dtype), bf16 to measure faster than fp32 (`bf16_pays`): oneDNN's report alone is not
    enough, as some of its native bf16 kernels are far slower than fp32 (see README, Performance)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if not cpu_has_fast_bf16():
        return None
    return torch.bfloat16 if probe is None or bf16_pays(probe) else None


def bf16_pays(step: Callable[[torch.dtype | None], None], rounds: int = 3, margin: float = 0.85) -> bool:
    """Whether `step(torch.bfloat16)` runs faster than `step(None)` (fp32) by at least 1 - margin: both warmed
    up, then timed interleaved, best of `rounds`. A near tie keeps fp32, the more exact of the two."""
    best: dict[torch.dtype | None, float] = {None: float("inf"), torch.bfloat16: float("inf")}
    for dtype in best:
        step(dtype)  # warm-up: oneDNN builds its kernels on first use
    for r in range(rounds):
        for dtype in (list(best) if r % 2 == 0 else list(best)[::-1]):
            start = time.perf_counter()
            step(dtype)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
        if best[torch.bfloat16] > 2 * best[None]:  # clearly slower: more rounds cannot change the answer
            break
    return best[torch.bfloat16] < margin * best[None]
