"""Random Mask: fixed binary masks on conv outputs, drawn once from a recorded seed.

`make_mask` is the pure function (the spec); `RandomMask` is the thin module that stores the mask as a
non-trainable buffer and multiplies it in, identically in training and evaluation, with no rescaling.
`ResampledMask` is the control the paper never ran: the same per-channel pattern, redrawn at every training
step and rescaled as dropout is, off at test time, so "fixed" versus "resampled" is the only difference.
"""

from __future__ import annotations

import torch
from torch import nn

from randmask.core.errors import RandmaskError


def n_dropped(ratio: float, n: int) -> int:
    """How many of n positions a drop ratio zeroes: round(ratio * n)."""
    return int(round(ratio * n))


def layer_seed(mask_seed: int, layer_index: int) -> int:
    """Seed of one layer's mask: distinct per (model mask seed, masked-layer index)."""
    return mask_seed * 1_000_003 + layer_index


def make_mask(shape: tuple[int, int, int], ratio: float, kind: str, seed: int) -> torch.Tensor:
    """A bool keep-mask of shape C×H×W (True = neuron kept), always drawn on the CPU for reproducibility.

    random: in every channel exactly round(ratio·H·W) positions dropped, uniformly, independently per channel.
    SM:     one such spatial pattern, shared by all channels of the layer.
    DC:     round(ratio·C) whole channels dropped.
    """
    return draw_keep(shape, ratio, kind, torch.Generator().manual_seed(seed))


def draw_keep(shape: tuple[int, int, int], ratio: float, kind: str,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """`make_mask`'s draw from a given generator (None: torch's global CPU generator)."""
    c, h, w = shape
    gen = generator
    keep = torch.ones(c, h * w, dtype=torch.bool)
    if kind == "DC":
        keep[torch.randperm(c, generator=gen)[: n_dropped(ratio, c)]] = False
        return keep.view(c, h, w)
    rows = 1 if kind == "SM" else c
    if kind not in ("random", "SM"):
        raise RandmaskError(f"unknown mask kind {kind!r}; expected 'random', 'SM' or 'DC'")
    k = n_dropped(ratio, h * w)
    # argsort of iid uniforms is a uniformly random permutation per row: its first k entries are the drops
    drop = torch.rand(rows, h * w, generator=gen).argsort(dim=1)[:, :k]
    keep[:rows].scatter_(1, drop, False)
    if kind == "SM":
        keep[:] = keep[0]
    return keep.view(c, h, w)


def like_activation(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A C×H×W mask in the strides of x's channels: HWC for a channels_last activation, else as it is. Same
    values, so the same products; a mask in the other layout sends the multiply down a slow strided path
    (18% of a channels_last 0.7-Shallow training step, bench/bench_core.py)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return keep.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return keep


def apply_mask(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the masked neurons of an N×C×H×W activation (the product also stops their gradient)."""
    return x * keep.to(dtype=x.dtype)


class RandomMask(nn.Module):
    """A fixed mask on one conv output. `block` is the ResNet block (0..4) the layer belongs to."""

    match_layout = True  # False only to time the old path (bench/bench_core.py --old): same values, slower

    def __init__(self, shape: tuple[int, int, int], ratio: float, kind: str = "random", seed: int = 0,
                 block: int = -1) -> None:
        super().__init__()
        self.shape, self.ratio, self.kind, self.seed, self.block = tuple(shape), ratio, kind, seed, block
        self.register_buffer("mask", make_mask(self.shape, ratio, kind, seed))
        self._cast: tuple | None = None

    def _keep_as(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the compiler fuses the cast; the Python cache would force recompiles
            return self.mask.to(dtype=x.dtype)
        # cast once per dtype/device/layout: under bf16 autocast a float32 mask would promote the whole activation
        # _version changes when load_state_dict copies new values into the buffer in place
        key = (x.dtype, x.device, self.mask.data_ptr(), self.mask._version,
               x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
        if self._cast is None or self._cast[:5] != key:
            cast = self.mask.to(dtype=x.dtype)
            self._cast = (*key, like_activation(cast, x) if self.match_layout else cast)
        return self._cast[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.mask.shape:
            raise RandmaskError(f"mask of shape {tuple(self.mask.shape)} cannot apply to activations of shape "
                                f"{tuple(x.shape[1:])}: the model was built for another input size")
        return x * self._keep_as(x)

    def fused_keep(self, x: torch.Tensor) -> torch.Tensor | bool:
        """The mask as H×W×C values of x's dtype for randmask.core.fused (the cast `forward` uses, viewed in an NHWC
        activation's order); False for a mask that is not a plain 0/1 pattern."""
        return self._keep_as(x).permute(1, 2, 0) if self.mask.dtype == torch.bool else False

    def measured_drop_ratio(self) -> float:
        return 1.0 - self.mask.float().mean().item()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, ratio={self.ratio:g}, kind={self.kind}, seed={self.seed}, block={self.block}"


class ResampledMask(nn.Module):
    """Dropout with Random Mask's pattern: in training, a fresh 'random' keep-mask (exactly round(ratio·H·W) zeros
    per channel) at every forward pass, shared by the batch and scaled by H·W/kept; in evaluation the identity.

    The draws come from torch's global CPU generator, which training seeds and saves at every checkpoint, so
    training stays deterministic and resumes bit-exactly."""

    kind = "Dropout"

    def __init__(self, shape: tuple[int, int, int], ratio: float, block: int = -1) -> None:
        super().__init__()
        self.shape, self.ratio, self.block = tuple(shape), ratio, block
        c, h, w = self.shape
        kept = h * w - n_dropped(ratio, h * w)
        if kept < 1:
            raise RandmaskError(f"drop ratio {ratio:g} leaves no position of a {h}×{w} map")
        self.scale = h * w / kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.shape:
            raise RandmaskError(f"dropout of shape {self.shape} cannot apply to activations of shape "
                                f"{tuple(x.shape[1:])}: the model was built for another input size")
        if not self.training:
            return x
        keep = draw_keep(self.shape, self.ratio, "random").to(device=x.device, dtype=x.dtype)
        return x * like_activation(keep * self.scale, x)

    def measured_drop_ratio(self) -> float:
        """The share of positions each training step drops (the same every step)."""
        return n_dropped(self.ratio, self.shape[1] * self.shape[2]) / (self.shape[1] * self.shape[2])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, ratio={self.ratio:g}, resampled every step, block={self.block}"
