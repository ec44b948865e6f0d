"""Images for display, never smoothed: C×H×W tensors as H×W×3 uint8, nearest-neighbour upscaling, a mask
overlay, and perturbations on a diverging colour scale centred on 0."""

from __future__ import annotations

import numpy as np
import torch

from randmask.core.errors import RandmaskError


def to_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One C×H×W image (uint8, or float in [0,1]) as H×W×3 uint8 (grey images repeated to three channels)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3:
        raise RandmaskError(f"expected one C×H×W image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    array = array.transpose(1, 2, 0)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def float_batch(x: np.ndarray, y: np.ndarray, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n (all for None) uint8 N×C×H×W images as floats in [0,1] and their labels as int64 tensors."""
    if n is not None:
        x, y = x[:n], y[:n]
    return torch.from_numpy(x).float().div(255), torch.from_numpy(y).long()


def upscale_nearest(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an H×W or H×W×C array: each pixel becomes a factor×factor block."""
    if not isinstance(factor, int) or factor < 1:
        raise RandmaskError(f"upscale factor must be a positive integer, got {factor!r}")
    return np.repeat(np.repeat(np.asarray(array), factor, axis=0), factor, axis=1)


def display_image(image: torch.Tensor | np.ndarray, size: int = 224) -> np.ndarray:
    """A C×H×W image as H×W×3 uint8 blown up by the largest integer factor that fits `size` pixels."""
    array = to_hwc_uint8(image)
    return upscale_nearest(array, max(1, size // max(array.shape[:2])))


def overlay_keep(image: torch.Tensor | np.ndarray, keep: torch.Tensor | np.ndarray, dim: float = 0.15) -> np.ndarray:
    """H×W×3 uint8: the image where `keep` (H×W, True = kept) holds, darkened to `dim` of itself elsewhere."""
    array = to_hwc_uint8(image).astype(np.float64)
    mask = keep.detach().cpu().numpy() if isinstance(keep, torch.Tensor) else np.asarray(keep)
    if mask.shape != array.shape[:2]:
        raise RandmaskError(f"mask of shape {mask.shape} does not match a {array.shape[0]}×{array.shape[1]} image")
    factor = np.where(mask.astype(bool), 1.0, dim)[..., None]
    return np.round(array * factor).astype(np.uint8)


# RdBu-like anchors: negative = blue, zero = near white, positive = red
_NEGATIVE, _ZERO, _POSITIVE = np.array([33, 102, 172.0]), np.array([247, 247, 247.0]), np.array([178, 24, 43.0])


def diverging_rgb(values: np.ndarray | torch.Tensor, vmax: float) -> np.ndarray:
    """H×W signed values -> H×W×3 uint8 on a diverging scale centred on 0: -vmax blue, 0 white, +vmax red."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
    if not vmax > 0:
        raise RandmaskError(f"colour scale vmax must be positive, got {vmax}")
    t = np.clip(v / vmax, -1.0, 1.0)[..., None]
    rgb = np.where(t >= 0, _ZERO + t * (_POSITIVE - _ZERO), _ZERO + (-t) * (_NEGATIVE - _ZERO))
    return np.round(rgb).astype(np.uint8)


def perturbation_image(adv: torch.Tensor, clean: torch.Tensor, vmax: float | None = None) -> tuple[np.ndarray, float]:
    """The perturbation adv - clean of one C×H×W image, averaged over channels, in 0-255 units, coloured on a
    diverging scale centred on 0. vmax (0-255 units) fixes the scale, e.g. to eps, so images compare; by
    default the largest |value|. Returns (H×W×3 uint8, vmax used)."""
    delta = (adv.detach().double().cpu() - clean.detach().double().cpu()).mul(255).mean(0)
    if vmax is None:
        vmax = float(delta.abs().max())
    return diverging_rgb(delta.numpy(), vmax if vmax > 0 else 1.0), vmax if vmax > 0 else 1.0


