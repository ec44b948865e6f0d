"""The protocols on corrupted images rather than attacks, as tidy rows like the others (protocols.py):

    noise      Figure 3: accuracy under clipped Gaussian noise
    shuffle    appendix A, Table 3: accuracy on patch-shuffled images all models know with >= 0.99 confidence
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from randmask.core.errors import RandmaskError
from randmask.experiments.evaluate import (
    DEFAULT_BATCH,
    Progress,
    Work,
    quantize,
    select_correct,
)
from randmask.experiments.protocols import check_pool, correct_count, images_cache_key, protocol_row

PAPER_SIGMAS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32)
PAPER_SHUFFLE_K = (2, 4, 8)


def gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma^2) noise (sigma in 0-255 units) clipped to [-2 sigma, 2 sigma]; clip the image to [0,1]."""
    z = torch.randn(images.shape, generator=generator, dtype=torch.float32).to(images.device)
    return (images + (z * sigma).clamp(-2 * sigma, 2 * sigma) / 255).clamp(0.0, 1.0)


def noise(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
          sigmas: Sequence[float] = PAPER_SIGMAS, seed: int = 0, quantize_images: bool = True, dataset: str = "",
          batch_size: int = DEFAULT_BATCH, progress: Progress | None = None,
          cache: str | os.PathLike | None = None) -> list[dict]:
    """Figure 3: accuracy under clipped Gaussian noise, one row per model and sigma (sigma 0 = clean).
    Every model sees the same noisy images; each sigma scales the same standard-normal draw. With `cache`,
    each model's predictions on each noisy set are kept (evaluate.predicted_labels)."""
    check_pool(x, y)
    if not all(math.isfinite(s) and s >= 0 for s in sigmas):
        raise RandmaskError(f"noise sigmas must be finite and >= 0, got {list(sigmas)}")
    levels = [0.0, *[float(s) for s in sigmas if s != 0]]
    work = Work(len(levels) * len(models), progress)
    rows = []
    for sigma in levels:
        noisy = gaussian_noise(x, sigma, torch.Generator().manual_seed(seed))
        if quantize_images:
            noisy = quantize(noisy, x)
        noisy_key = images_cache_key(noisy, cache)
        for name, model in models.items():
            rows.append(protocol_row("noise", dataset, "", name, f"noise{sigma:g}", "accuracy",
                             correct_count(model, noisy, y, batch_size, cache, images_key=noisy_key), len(x), sigma=sigma,
                             quantized=quantize_images, seed=seed))
            work.phase(1)(1, 1)
    return rows


def patch_shuffle(images: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Cut each image into a k×k grid of patches and put the patches back in a random order (one per image)."""
    n, c, h, w = images.shape
    if k < 1 or h % k or w % k:
        raise RandmaskError(f"a {k}×{k} grid does not divide {h}×{w} images evenly")
    ph, pw = h // k, w // k
    patches = images.reshape(n, c, k, ph, k, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, k * k, c, ph, pw)
    order = torch.rand((n, k * k), generator=generator).argsort(1).to(images.device)
    shuffled = patches.gather(1, order.view(n, k * k, 1, 1, 1).expand_as(patches))
    return shuffled.reshape(n, k, k, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def shuffle(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
            ks: Sequence[int] = PAPER_SHUFFLE_K, n: int | None = 5000, min_confidence: float = 0.99,
            seed: int = 0, dataset: str = "", batch_size: int = DEFAULT_BATCH,
            progress: Progress | None = None) -> list[dict]:
    """Table 3: on the first n pool images that every model classifies correctly with probability
    >= min_confidence, the accuracy of each model after a seeded k×k patch shuffle (same images for all)."""
    check_pool(x, y)
    chosen = select_correct(list(models.values()), x, y, n=n, min_confidence=min_confidence, batch_size=batch_size)
    xs, ys = x[chosen], y[chosen]
    work = Work(len(ks) * len(models), progress)
    rows = []
    for k in ks:
        shuffled = patch_shuffle(xs, k, torch.Generator().manual_seed(seed + k))
        for name, model in models.items():
            rows.append(protocol_row("shuffle", dataset, "", name, f"shuffle{k}x{k}", "accuracy",
                             correct_count(model, shuffled, ys, batch_size), len(ys), k=k,
                             min_confidence=min_confidence, n_pool=len(x), seed=seed))
            work.phase(1)(1, 1)
    return rows
