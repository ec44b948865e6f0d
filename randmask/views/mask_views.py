"""What the Masks page shows of a model's masks: per-layer statistics, channel montages, the three kinds side
by side, and which input pixels the masked stem still lets through (coverage, receptive fields)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from randmask.core.errors import RandmaskError
from randmask.core.masks import make_mask
from randmask.core.models import mask_modules
from randmask.core.notation import MASK_KINDS
from randmask.views.images import overlay_keep, upscale_nearest


def get_mask(model: nn.Module, name: str) -> torch.Tensor:
    """The bool keep-mask (C×H×W, True = kept) of the masked layer `name`."""
    for layer, module in mask_modules(model, fixed_only=True):
        if layer == name:
            return module.mask.detach().cpu()
    raise RandmaskError(f"the model has no masked layer {name!r}")


def mask_statistics(model: nn.Module) -> list[dict]:
    """One row per masked layer: where it is, its nominal and measured drop ratio, and how the drops spread."""
    rows = []
    for name, module in mask_modules(model, fixed_only=True):
        keep = module.mask.detach().cpu()
        c, h, w = keep.shape
        dropped_per_channel = (~keep).flatten(1).float().mean(1)
        dropped_everywhere = (~keep).all(0)
        rows.append({
            "layer": name, "block": module.block, "kind": module.kind, "shape": f"{c}×{h}×{w}",
            "ratio": module.ratio, "measured_drop_ratio": module.measured_drop_ratio(),
            "dropped": int((~keep).sum()), "neurons": keep.numel(),
            "channel_drop_min": dropped_per_channel.min().item(), "channel_drop_max": dropped_per_channel.max().item(),
            "dead_channels": int((dropped_per_channel == 1).sum()),
            # share of positions no channel keeps: about ratio**C for Random Mask, the ratio itself for SM
            "positions_dropped_in_all_channels": dropped_everywhere.float().mean().item(),
        })
    return rows


def mask_montage(keep: torch.Tensor, first: int = 0, count: int = 16, columns: int = 8, factor: int = 3,
                 gap: int = 2) -> np.ndarray:
    """Channels first..first+count-1 of a C×H×W keep-mask as one grey image: a grid of `columns` tiles, each
    channel nearest-neighbour upscaled by `factor` (kept light, dropped dark), tiles `gap` white pixels apart."""
    c, h, w = keep.shape
    chosen = list(range(first, min(first + count, c)))
    if not chosen:
        raise RandmaskError(f"no channels from {first} in a {c}-channel mask")
    rows = math.ceil(len(chosen) / columns)
    tile_h, tile_w = h * factor, w * factor
    width = min(columns, len(chosen)) * (tile_w + gap) - gap
    out = np.full((rows * (tile_h + gap) - gap, width), 255, dtype=np.uint8)
    for i, ch in enumerate(chosen):
        r, col = divmod(i, columns)
        tile = upscale_nearest(np.where(keep[ch].numpy(), 235, 20).astype(np.uint8), factor)
        out[r * (tile_h + gap):r * (tile_h + gap) + tile_h, col * (tile_w + gap):col * (tile_w + gap) + tile_w] = tile
    return out


def kind_comparison(shape: tuple[int, int, int], ratio: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-masks of the three kinds (Random, SM, DC) for one layer shape and ratio, from one seed."""
    return {kind: make_mask(tuple(shape), ratio, kind, seed) for kind in MASK_KINDS}


def stem_tiles(image: torch.Tensor, ratio: float, seed: int = 0, channels: int = 16, shown: int = 3,
               factor: int = 5) -> list[tuple[np.ndarray, str]]:
    """(picture, caption) of what a masked stem of `channels` channels passes on of one C×H×W image, for each
    kind at one drop ratio: `shown` Random Mask channels, SM's one pattern, and DC's channels together (the
    image where any channel keeps it), darkened where dropped and upscaled by `factor`."""
    kinds = kind_comparison((channels, *image.shape[-2:]), ratio, seed)

    def tile(keep: torch.Tensor) -> np.ndarray:
        return upscale_nearest(overlay_keep(image, keep), factor)

    dead = int((~kinds["DC"].flatten(1).any(1)).sum())
    return ([(tile(kinds["random"][i]), f"Random Mask, channel {i + 1}") for i in range(shown)]
            + [(tile(kinds["SM"][0]), "SM: one pattern, every channel"),
               (tile(kinds["DC"].any(0)), f"DC: {dead} of {channels} channels dropped whole, the rest see everything")])


def drop_frequency(keep: torch.Tensor) -> torch.Tensor:
    """H×W: the share of channels that drop each position."""
    return (~keep).float().mean(0)


def _box(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Sum over the kernel×kernel neighbourhood of every position of a C×H×W tensor (zero padding)."""
    weight = torch.ones(1, 1, kernel, kernel, dtype=torch.float32)
    return F.conv2d(x.float()[:, None], weight, padding=kernel // 2)[:, 0]


def input_coverage(keep: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """For a stride-1 stem conv with a kernel×kernel filter followed by mask `keep` (C×H×W): C×H×W counts of
    how many kept output neurons of each channel have each input pixel in their window. A channel's filter
    sees a pixel only where the count is > 0."""
    if keep.dim() != 3:
        raise RandmaskError(f"expected a C×H×W mask, got shape {tuple(keep.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise RandmaskError(f"kernel must be a positive odd size, got {kernel}")
    return _box(keep.bool(), kernel).round().to(torch.int64)


def coverage_summary(keep: torch.Tensor, kernel: int = 3) -> dict:
    """How much of the input the masked stem still sees: per channel and for the layer as a whole. With one
    spatial pattern shared by all channels (SM) the layer can see at most kernel² × (1 - ratio) of the image."""
    seen = input_coverage(keep, kernel) > 0
    per_channel = seen.flatten(1).float().mean(1)
    kept = keep.float().mean().item()
    return {"channel_sees_mean": per_channel.mean().item(), "channel_sees_min": per_channel.min().item(),
            "layer_sees": seen.any(0).float().mean().item(), "kept_share": kept,
            "shared_mask_bound": min(1.0, kernel * kernel * kept)}


def receptive_field(keep: torch.Tensor, row: int, col: int, channel: int | None = None,
                    kernel: int = 3) -> torch.Tensor:
    """H×W counts of the paths by which each input pixel reaches the neuron at (row, col) of the next
    kernel×kernel conv (stride 1) through the masked stem: the sum over the kept stem neurons in that neuron's
    window (of one channel, or all) of their own input windows. Unmasked and away from the border, one channel
    gives the 5×5 pyramid outer([1,2,3,2,1], [1,2,3,2,1])."""
    c, h, w = keep.shape
    if not (0 <= row < h and 0 <= col < w):
        raise RandmaskError(f"position ({row}, {col}) is outside the {h}×{w} feature map")
    channels = range(c) if channel is None else [channel]
    if channel is not None and not 0 <= channel < c:
        raise RandmaskError(f"channel {channel} is outside 0..{c - 1}")
    r = kernel // 2
    window = torch.zeros(h, w, dtype=torch.bool)
    window[max(0, row - r):row + r + 1, max(0, col - r):col + r + 1] = True
    reach = keep[list(channels)].bool() & window
    return _box(reach, kernel).sum(0).round().to(torch.int64)


def filter_window(keep: torch.Tensor, row: int, col: int, kernel: int = 3) -> torch.Tensor:
    """C×k×k: which inputs of a next-layer k×k filter centred at (row, col) are live (kept and inside the map)."""
    c, h, w = keep.shape
    r = kernel // 2
    padded = F.pad(keep.bool()[None].float(), (r, r, r, r))[0].bool()
    if not (0 <= row < h and 0 <= col < w):
        raise RandmaskError(f"position ({row}, {col}) is outside the {h}×{w} feature map")
    return padded[:, row:row + kernel, col:col + kernel].clone()


def stem_mask(model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """(name, keep-mask) of the mask right after the 3×3 stem conv (block 0), or None when it is unmasked."""
    for name, module in mask_modules(model, fixed_only=True):
        if module.block == 0:
            return name, module.mask.detach().cpu()
    return None




# ------------------------------------------------------------------------------------------------ the Masks page
BLOCK_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"]  # blocks 0-4, all dark enough on white
KIND_TITLES = {"random": "Random Mask", "SM": "SM (same mask, all channels)", "DC": "DC (drop whole channels)"}


def by_layer(stats: list[dict]) -> dict[str, dict]:
    """mask_statistics rows by layer name, in forward order."""
    return {row["layer"]: row for row in stats}


def layer_labels(stats: list[dict]) -> dict[str, str]:
    """{layer: 'block 1 · body.layer1.0.mask1 · 16×32×32'}: how the layer picker names each masked layer."""
    return {row["layer"]: f"block {row['block']} · {row['layer']} · {row['shape']}" for row in stats}


def channel_map(keep: torch.Tensor, channel: int) -> torch.Tensor:
    """H×W ints of one channel of a keep-mask: 1 kept, 0 dropped (what its heatmap draws)."""
    return keep[channel].int()


def layer_caption(row: dict) -> str:
    """One layer's statistics in a sentence: nominal and measured ratio, spread over channels, dead channels."""
    return (f"Nominal drop ratio {row['ratio']:g}, measured {row['measured_drop_ratio']:.4f} "
            f"({row['dropped']:,} of {row['neurons']:,} neurons); per channel between "
            f"{row['channel_drop_min']:.3f} and {row['channel_drop_max']:.3f}; "
            f"{row['dead_channels']} channel(s) dropped entirely.")


def montage_caption(keep: torch.Tensor, first: int, count: int = 16) -> str:
    """What mask_montage(keep, first, count) shows: which channels, in which order."""
    last = min(first + count, keep.shape[0]) - 1
    return f"channels {first}–{last}, left to right, top to bottom (light kept, dark dropped)"


def statistics_table(stats: list[dict]) -> list[dict]:
    """mask_statistics rows as the Drop statistics table (numbers stay numbers: the columns format them)."""
    return [{"layer": r["layer"], "block": r["block"], "kind": r["kind"], "shape": r["shape"], "ratio": r["ratio"],
             "measured": r["measured_drop_ratio"], "dropped": r["dropped"], "neurons": r["neurons"],
             "dead channels": r["dead_channels"], "kept by no channel": r["positions_dropped_in_all_channels"]}
            for r in stats]


def drop_ratio_bars(stats: list[dict]) -> tuple[list[dict], dict]:
    """(one bar series per block: name, layers, measured drop ratios, colour; the nominal ratio of every layer
    as x and y): the Drop statistics chart, one series a block so that its legend names the colours."""
    bars = []
    for block in dict.fromkeys(r["block"] for r in stats):
        mine = [r for r in stats if r["block"] == block]
        bars.append({"name": f"block {block}", "x": [r["layer"] for r in mine],
                     "y": [r["measured_drop_ratio"] for r in mine],
                     "color": BLOCK_COLORS[int(block) % len(BLOCK_COLORS)]})
    return bars, {"x": [r["layer"] for r in stats], "y": [r["ratio"] for r in stats]}


def kind_defaults(keep: torch.Tensor | None, row: dict | None, width: int) -> tuple[tuple[int, int, int], float]:
    """(layer shape, drop ratio) the Random vs SM vs DC view starts from: the chosen layer's, else a
    width-channel 32×32 stem at 0.7."""
    shape = tuple(keep.shape) if keep is not None else (width, 32, 32)
    return shape, float(row["ratio"]) if row else 0.7


def kind_panels(shape: tuple[int, int, int], ratio: float, seed: int, channel: int) -> tuple[int, list[dict]]:
    """(the channel shown, one panel per kind): its title, the channel's keep map, the drop frequency per
    position and, for square maps of 8 or more, how much of the input a 3×3 stem with that mask still sees (as
    text; None otherwise). The channel is clipped to the layer's channels."""
    shown = min(channel, shape[0] - 1)
    panels = []
    for kind, keep in kind_comparison(shape, ratio, seed).items():
        sees = None
        if shape[1] == shape[2] and shape[1] >= 8:
            sees = f"{100 * coverage_summary(keep)['layer_sees']:.1f}%"
        panels.append({"kind": kind, "title": KIND_TITLES[kind], "channel": channel_map(keep, shown),
                       "frequency": drop_frequency(keep), "sees": sees})
    return shown, panels


def kinds_caption(shape: tuple[int, int, int], ratio: float) -> str:
    """The comparison's caption, with the most a shared pattern lets a 3×3 stem see: 9 × (1 − ratio)."""
    return (f"Layer shape {shape[0]}×{shape[1]}×{shape[2]}, drop ratio {ratio:g}. With one pattern shared by "
            f"all channels, a 3×3 stem sees at most 9 × (1 − ratio) = {100 * min(1, 9 * (1 - ratio)):.0f}% of "
            "the image; independent patterns per channel cover it almost entirely.")


def model_stem(model: nn.Module) -> tuple[torch.Tensor, str] | None:
    """(stem keep-mask, where it comes from, in words) of a model whose stem is masked, else None."""
    stem = stem_mask(model)
    if stem is None:
        return None
    name, keep = stem
    return keep, f"the model's stem mask ({name}, {tuple(keep.shape)})"


def stand_in_stem(kind: str, ratio: float, width: int, dataset: str) -> tuple[torch.Tensor, str]:
    """(keep-mask, where it comes from, in words) of a `kind` mask on a width-channel stem of the data set's
    image size (28×28 for MNIST, else 32×32), mask seed 0: for a model whose stem is unmasked."""
    size = 28 if dataset == "mnist" else 32
    keep = kind_comparison((width, size, size), ratio, 0)[kind]
    return keep, f"a {kind} mask of ratio {ratio:g} on a {width}-channel stem (this model's stem is unmasked)"


def filter_view(keep: torch.Tensor, image: torch.Tensor, channel: int, row: int, col: int) -> dict:
    """Everything the 'What one 3×3 filter sees' view shows of a stem keep-mask (C×H×W) and one C×H×W image:
    the shares seen (as text), the image with the pixels the channel's filter never reads darkened (8× up),
    how many channels see each pixel, the input paths into the next-layer neuron at (row, col) cropped to the
    9×9 around it (with the rows and columns kept), and its 3×3 window's live channels per offset."""
    coverage = input_coverage(keep)
    summary = coverage_summary(keep)
    field = receptive_field(keep, row, col)
    h, w = keep.shape[1:]
    r0, r1, c0, c1 = max(0, row - 4), min(h, row + 5), max(0, col - 4), min(w, col + 5)
    seen = overlay_keep(image, coverage[channel] > 0, dim=0.12)
    return {"channel_sees": f"{100 * float((coverage[channel] > 0).float().mean()):.1f}% of pixels",
            "layer_sees": f"{100 * summary['layer_sees']:.1f}% of pixels",
            "bound": f"{100 * summary['shared_mask_bound']:.0f}%",
            "seen": upscale_nearest(seen, 8), "channels_seeing": (coverage > 0).sum(0),
            "field": field[r0:r1, c0:c1], "field_rows": list(range(r0, r1)), "field_cols": list(range(c0, c1)),
            "window": filter_window(keep, row, col).sum(0)}


def uniform_drop_text(stats: list[dict], tolerance: float = 0.01) -> str | None:
    """A sentence for the Drop statistics view when every masked layer has one nominal ratio and drops it up to
    rounding (a chart of identical bars says nothing more); None when the layers differ and the chart is worth it."""
    nominal = {r["ratio"] for r in stats}
    measured = [r["measured_drop_ratio"] for r in stats]
    if not stats or len(nominal) > 1 or max(abs(r["measured_drop_ratio"] - r["ratio"]) for r in stats) >= tolerance:
        return None
    spread = f"{min(measured):.4f}" if max(measured) - min(measured) < 5e-5 else \
        f"between {min(measured):.4f} and {max(measured):.4f}"
    return (f"All {len(stats)} masked layers drop the nominal {nominal.pop():g} of their neurons, up to rounding to "
            f"whole positions per channel (measured: {spread}), so there is no chart of {len(stats)} equal bars.")
