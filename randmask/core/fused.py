"""Training-mode BatchNorm fused with the Random Mask, residual addition and ReLU that follow it, on the CPU.

`bn_mask_relu(x, bn, mask, residual=..., relu=...)` is what a ResNet unit calls in place of
`relu(mask(bn(x)) + residual)`. On a CPU, in training mode, for a channels_last float32 or bfloat16 activation, it
runs `fused_bn.cpp`: forward, one read of the activation for the statistics and one more for normalisation, mask,
addition and ReLU; backward, the BatchNorm gradient with ReLU's gate and the mask in two passes. Eager PyTorch runs each of those as its own pass over the
activation: about a quarter of a quick-preset training step on a 2-core CPU (bench/bench_core.py). Everywhere
else (eval mode, GPUs, NCHW, hooks on the modules, a resampled mask, no C++ compiler, `RANDMASK_FUSED=0`) it runs
the modules themselves, unchanged.

The library is built at first use with the system's g++ (about a second; no torch headers) into
`<data cache>/kernels/`, named by a hash of its source, flags, compiler and CPU, and is used only after it
reproduces the eager computation on a small case. Same statistics as `nn.BatchNorm2d` (biased variance to
normalise, unbiased in the running estimate), from block-wise moments merged in a fixed order, so a run gives
the same numbers at any thread count; they differ from eager PyTorch's within float rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_registry

from randmask.core.device import cpu_fields
from randmask.core.settings import data_cache_root, fused_kernels_enabled, fused_march

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_bn.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC", "-std=c++20")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_I64, _PTR, _INT, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    "rm_bn_forward": [_INT, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _F64, _F64, _PTR, _PTR, _PTR],
    "rm_bn_backward": [_INT, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR],
}


def _cpu_text() -> str:
    """What -march=native builds for (part of the cache key): the CPU's name, generation and instruction sets."""
    fields = cpu_fields()
    return " ".join(fields.get(k, "") for k in ("model name", "cpu family", "model", "flags")).strip() \
        or platform.processor()


def _flags() -> tuple[str, ...]:
    """FLAGS with $RANDMASK_FUSED_MARCH in place of -march=native."""
    return tuple(f"-march={fused_march()}" if flag == "-march=native" else flag for flag in FLAGS)


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = _flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *flags, version, _cpu_text()]).encode()).hexdigest()[:16]
    target = data_cache_root() / "kernels" / f"fused_bn-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # several processes may build at once
        built = Path(tmp) / target.name
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernels, or None (logged once) when they cannot be built or do not match eager PyTorch."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        log.info("fused BatchNorm kernels off: no C++ compiler (g++ or $CXX) on PATH")
        return None
    try:
        lib = _load(_build(compiler))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("fused BatchNorm kernels off: %s", exc)
        return None
    # the first call may come from inside no_grad, inference_mode or autocast: the check needs plain autograd
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
            agrees = _agrees_with_eager(lib)
    except Exception as exc:  # whatever goes wrong here, training goes on with the eager modules
        log.warning("fused BatchNorm kernels off: their check failed (%s)", exc)
        return None
    if not agrees:
        log.warning("fused BatchNorm kernels off: they do not reproduce eager PyTorch on this machine")
        return None
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _BatchNormMaskReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, keep, relu, bn, lib):
        n, c, h, w = x.shape
        out = torch.empty_like(x, memory_format=torch.channels_last)
        saved = torch.empty(4, c)  # per channel: mean, 1/std, and the scale and shift they make with the affine
        # ReLU's gate, one bit a value: the backward pass reads it instead of the output (2 or 4 bytes a value)
        gate = torch.empty(x.numel() // 16, dtype=torch.int16) if relu else None
        running = bn.running_mean is not None
        lib.rm_bn_forward(_DTYPES[x.dtype], x.data_ptr(), out.data_ptr(), _ptr(residual), _ptr(gate), n * h * w, c,
                          h * w, _ptr(keep), weight.data_ptr(), bias.data_ptr(), bn.eps, bn.momentum,
                          _ptr(bn.running_mean), _ptr(bn.running_var), saved.data_ptr())
        if running:
            bn.num_batches_tracked.add_(1)
        ctx.save_for_backward(x, gate, keep, weight, saved)
        ctx.has_residual, ctx.lib = residual is not None, lib
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradient has no graph of its own
            raise RuntimeError("randmask.core.fused: no second derivatives through the fused BatchNorm kernels; "
                               "train with RANDMASK_FUSED=0 for gradient penalties and the like")
        x, gate, keep, weight, saved = ctx.saved_tensors
        n, c, h, w = x.shape
        grad = grad_out.to(x.dtype).contiguous(memory_format=torch.channels_last)
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        grad_residual = torch.empty_like(x, memory_format=torch.channels_last) if ctx.has_residual else None
        grad_weight, grad_bias = torch.empty(c), torch.empty(c)
        ctx.lib.rm_bn_backward(_DTYPES[x.dtype], grad.data_ptr(), _ptr(gate), x.data_ptr(), grad_x.data_ptr(),
                               _ptr(grad_residual), n * h * w, c, h * w, _ptr(keep),
                               weight.data_ptr(), saved.data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr())
        return grad_x, grad_weight, grad_bias, grad_residual, None, None, None, None


def _eager(x: torch.Tensor, bn: nn.Module, mask: nn.Module, residual: torch.Tensor | None,
           relu: bool) -> torch.Tensor:
    y = mask(bn(x))
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _keep(x: torch.Tensor, mask: nn.Module) -> torch.Tensor | None | bool:
    """The mask as contiguous H×W×C values of x's dtype; None for no mask; False where the kernels cannot apply
    it (a resampled or non-0/1 mask, another shape: the mask module then raises its own clear error)."""
    if type(mask) is nn.Identity:
        return None
    fused_keep = getattr(mask, "fused_keep", None)
    keep = False if fused_keep is None else fused_keep(x)
    if keep is False or tuple(keep.shape) != (x.shape[2], x.shape[3], x.shape[1]) or not keep.is_contiguous():
        return False
    return keep


def _has_hooks(*modules: nn.Module) -> bool:
    """A forward hook (on these modules or global) must see the modules run, so it turns fusion off."""
    return bool(module_registry._global_forward_hooks or module_registry._global_forward_pre_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks for m in modules)


def _plan(x: torch.Tensor, bn: nn.Module, mask: nn.Module,
          residual: torch.Tensor | None) -> tuple[ctypes.CDLL | None, torch.Tensor | None]:
    """(the kernels, or None where the modules run; the mask they apply)."""
    usable = (type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.momentum is not None
              and bn.num_features % 16 == 0 and bn.weight.dtype == torch.float32
              and (bn.running_mean is None or bn.running_mean.dtype == torch.float32)
              and x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and x.numel() > 0
              and x.shape[1] == bn.num_features and x.is_contiguous(memory_format=torch.channels_last)
              and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                        and residual.is_contiguous(memory_format=torch.channels_last)))
              and not _has_hooks(bn, mask) and not torch.compiler.is_compiling() and fused_kernels_enabled())
    keep = _keep(x, mask) if usable else False
    lib = None if keep is False else library()
    return lib, (keep if lib is not None else None)


def fusable(x: torch.Tensor, bn: nn.Module, mask: nn.Module, residual: torch.Tensor | None = None) -> bool:
    """Whether `bn_mask_relu` runs the fused kernels for these inputs (else the modules themselves)."""
    return _plan(x, bn, mask, residual)[0] is not None


def bn_mask_relu(x: torch.Tensor, bn: nn.Module, mask: nn.Module, *, residual: torch.Tensor | None = None,
                 relu: bool = True) -> torch.Tensor:
    """`relu(mask(bn(x)) + residual)` (residual and ReLU optional), fused on a CPU in training mode."""
    lib, keep = _plan(x, bn, mask, residual)
    if lib is None:
        return _eager(x, bn, mask, residual, relu)
    return _BatchNormMaskReLU.apply(x, bn.weight, bn.bias, residual, keep, relu, bn, lib)


def _agrees_with_eager(lib: ctypes.CDLL) -> bool:
    """The kernels against nn.BatchNorm2d + mask (+ residual) + ReLU on small float32 cases."""
    gen = torch.Generator().manual_seed(0)
    for with_residual in (True, False):
        x = torch.randn(4, 16, 5, 3, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
        res = torch.randn(4, 16, 5, 3, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
        keep = (torch.rand(5, 3, 16, generator=gen) < 0.5).float()
        grad = torch.randn(4, 16, 5, 3, generator=gen)
        bn_ref, bn = nn.BatchNorm2d(16), nn.BatchNorm2d(16)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.uniform_(-0.5, 0.5, generator=gen)
        bn_ref.load_state_dict(bn.state_dict())
        inputs = (x, res) if with_residual else (x,)
        ref = F.relu(bn_ref(x) * keep.permute(2, 0, 1) + (res if with_residual else 0))
        ref_grads = torch.autograd.grad(ref, (*inputs, bn_ref.weight, bn_ref.bias), grad)
        out = _BatchNormMaskReLU.apply(x, bn.weight, bn.bias, res if with_residual else None, keep, True, bn, lib)
        grads = torch.autograd.grad(out, (*inputs, bn.weight, bn.bias), grad)
        if not (torch.allclose(out, ref, atol=1e-5) and torch.allclose(bn.running_var, bn_ref.running_var, atol=1e-6)
                and torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-6)
                and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, ref_grads, strict=True))):
            return False
    return True
