"""Device and precision choices: CUDA when present, else CPU; bf16 autocast only where the CPU has it and a
short measured probe shows it pays."""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU reports AMX tiles for bf16 (Intel Sapphire Rapids on): bf16 matrix work there runs well ahead of
    fp32 (2x at 1 thread, 1.5x at 2 on a 2-core Xeon, issue #33), so no probe is needed."""
    return "amx_bf16" in cpu_fields(cpuinfo).get("flags", "").split()


@dataclass(frozen=True)
class PrecisionChoice:
    """An autocast dtype (None: fp32) and why it was chosen, for the training log."""

    dtype: torch.dtype | None
    reason: str


def choose_precision(device: torch.device, precision: str,
                     probe: Callable[[torch.dtype | None], None] | None = None) -> PrecisionChoice:
    """The autocast dtype for a precision setting ('auto', 'fp32', 'bf16', 'fp16') and the reason.

    On a CPU, 'auto' decides from what the hardware reports where that settles it: no native bf16 (oneDNN's
    report) means fp32, AMX means bf16. Between the two (AVX512-BF16 without AMX, e.g. AMD Zen 4 and 5) some
    native bf16 kernels are far slower than fp32 (README, Performance), so `probe` (one training step in the
    given autocast dtype) is timed in process CPU time, which another process's load does not stretch the way
    it stretches wall time (`bf16_probe`)."""
    if precision == "fp32":
        return PrecisionChoice(None, "asked for fp32")
    if precision in ("bf16", "fp16"):
        return PrecisionChoice(torch.bfloat16 if precision == "bf16" else torch.float16, f"asked for {precision}")
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return PrecisionChoice(torch.bfloat16 if bf16 else torch.float16,
                               "GPU with bf16" if bf16 else "GPU without bf16: fp16")
    if not cpu_has_fast_bf16():
        return PrecisionChoice(None, "CPU without native bf16 (oneDNN): fp32")
    if cpu_has_amx_bf16():
        return PrecisionChoice(torch.bfloat16, "CPU with AMX bf16 units: bf16")
    if probe is None:
        return PrecisionChoice(torch.bfloat16, "CPU with native bf16 (oneDNN), not probed: bf16")
    fp32, bf16 = bf16_probe(probe)
    pays = bf16 < BF16_MARGIN * fp32
    return PrecisionChoice(torch.bfloat16 if pays else None,
                           f"CPU with native bf16, no AMX; probe step {1e3 * bf16:.0f} ms bf16 vs {1e3 * fp32:.0f} ms "
                           f"fp32 (CPU time, best of 3): {'bf16' if pays else 'fp32'}")


def autocast_dtype(device: torch.device, precision: str,
                   probe: Callable[[torch.dtype | None], None] | None = None) -> torch.dtype | None:
    """`choose_precision`'s dtype alone."""
    return choose_precision(device, precision, probe).dtype


BF16_MARGIN = 0.85  # bf16 must save 15% of a step: a near tie keeps fp32, the more exact of the two


def bf16_probe(step: Callable[[torch.dtype | None], None], rounds: int = 3) -> tuple[float, float]:
    """(fp32, bf16) seconds of `step` in each dtype: both warmed up, then timed interleaved, best of `rounds`.
    Timed in process CPU time (all threads), not wall time: a load spike from other processes stretches wall
    time by whatever share of the cores they take, which twice made a loaded probe keep fp32 for a whole run."""
    best: dict[torch.dtype | None, float] = {None: float("inf"), torch.bfloat16: float("inf")}
    for dtype in best:
        step(dtype)  # warm-up: oneDNN builds its kernels on first use
    for r in range(rounds):
        for dtype in (list(best) if r % 2 == 0 else list(best)[::-1]):
            start = time.process_time()
            step(dtype)
            best[dtype] = min(best[dtype], time.process_time() - start)
        if best[torch.bfloat16] > 2 * best[None]:  # clearly slower: more rounds cannot change the answer
            break
    return best[None], best[torch.bfloat16]


def bf16_pays(step: Callable[[torch.dtype | None], None], rounds: int = 3, margin: float = BF16_MARGIN) -> bool:
    """Whether `step(torch.bfloat16)` costs less CPU time than `step(None)` (fp32) by at least 1 - margin."""
    fp32, bf16 = bf16_probe(step, rounds)
    return bf16 < margin * fp32
