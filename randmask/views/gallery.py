"""The adversarial gallery: the same images attacked against a Normal and a masked model, what both models
make of every version, and one PNG of it all (original | adversarial vs each | both perturbations)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from randmask.attacks import canonical_attack, parse_attack
from randmask.attacks.base import Progress
from randmask.core.datasets import CLASSES
from randmask.core.errors import NotationError, RandmaskError
from randmask.experiments.evaluate import Work, craft, predict, select_correct, unchanged_note
from randmask.views.images import diverging_rgb, perturbation_image, to_hwc_uint8, upscale_nearest

ATTACK_KINDS = ("FGSM", "PGD", "CW", "Square")


def attack_notation(kind: str, eps: float = 16, *, kappa: float = 40, cw_search: int = 5, cw_steps: int = 50,
                    queries: int = 300) -> str:
    """Canonical attack notation for the gallery's controls (eps in 0-255 units). PGD uses the paper's step
    rule (step 1), CW a short binary search and Square a small query budget so a CPU answers in seconds."""
    if kind == "FGSM":
        text = f"FGSM{eps:g}"
    elif kind == "PGD":
        text = f"PGD{eps:g}"
    elif kind == "CW":
        text = f"CW{kappa:g}(search={cw_search}, steps={cw_steps})"
    elif kind == "Square":
        text = f"Square{eps:g}(queries={queries})"
    else:
        raise NotationError(f"unknown attack kind {kind!r}; the gallery offers {', '.join(ATTACK_KINDS)}")
    return canonical_attack(text)


@dataclass
class Gallery:
    """Clean images, their adversarial versions against each source, and every model's view of each image."""

    attack: str
    names: tuple[str, str]  # (normal source, masked source)
    indices: list[int]
    labels: torch.Tensor
    clean: torch.Tensor
    adv: dict[str, torch.Tensor]  # source name -> adversarial images (as stored: uint8 grid)
    preds: dict[str, dict[str, torch.Tensor]]  # image column ("clean" or source name) -> model name -> probs
    linf: dict[str, torch.Tensor]
    dataset: str = "cifar10"
    eps: float | None = None

    def column_keys(self) -> list[str]:
        return ["clean", *self.names]

    def caption(self, column: str, i: int) -> str:
        """'Normal ResNet-18: cat 91% · 0.9-Shallow: dog 55%' for image i of a column."""
        parts = []
        for model, prob in self.preds[column].items():
            conf, pred = prob[i].max(0)
            parts.append(f"{model}: {CLASSES[self.dataset][int(pred)]} {100 * float(conf):.0f}%")
        return " · ".join(parts)

    def unchanged_notes(self) -> list[str]:
        """Per source whose attack handed back some images untouched: what happened and what to change."""
        notes = (unchanged_note(self.attack, int((self.linf[name] == 0).sum()), len(self.linf[name]), name)
                 for name in self.names)
        return [note for note in notes if note]

    def perturbation_scale(self) -> float:
        """Common colour scale (0-255 units) for every perturbation shown: eps, or the largest change."""
        if self.eps is not None:
            return float(self.eps)
        return max(float((a - self.clean).abs().amax() * 255) for a in self.adv.values()) or 1.0


def build_gallery(normal: nn.Module, masked: nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor, *,
                  names: tuple[str, str], indices: Sequence[int] | None = None, dataset: str = "cifar10",
                  seed: int = 0, progress: Progress | None = None) -> Gallery:
    """Attack the normal and the masked model on the same images (floats in [0,1]) and record both models'
    predictions on the clean and both adversarial sets. Images are rounded to uint8 as they would be stored.
    `progress` hears (images done, 2 × images); CW reports each image as it finishes."""
    if names[0] == names[1]:
        raise RandmaskError("pick two different models: a normal one and a masked one")
    spec = parse_attack(attack)
    work = Work(2 * len(x), progress)
    sources = {names[0]: normal, names[1]: masked}
    adv, linf = {}, {}
    # CW (l2) optimises each image for many steps: one at a time, so progress counts images as they finish
    batch = {"batch_size": 1} if spec.norm == "l2" else {}
    for name, model in sources.items():
        crafted = craft(model, spec.build(model, seed=seed), x, y, seed=seed, quantize_images=True,
                        progress=work.phase(len(x)), **batch)
        adv[name], linf[name] = crafted.adv.cpu(), crafted.linf.cpu()
    columns = {"clean": x.cpu(), **adv}
    preds = {column: {name: predict(model, images).softmax(1).cpu() for name, model in sources.items()}
             for column, images in columns.items()}
    return Gallery(str(spec), names, list(indices) if indices is not None else list(range(len(x))), y.cpu(),
                   x.cpu(), adv, preds, linf, dataset, spec.eps)


def choose_images(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, start: int, count: int,
                  only_correct: bool) -> list[int]:
    """Indices of the images to attack: the first `count` from `start` on, or, with only_correct, the first
    `count` from there that every model classifies correctly (an error when there is none)."""
    if not only_correct:
        return list(range(start, min(start + count, len(x))))
    chosen = [int(i) + start for i in select_correct(list(models), x[start:], y[start:], n=count)]
    if not chosen:
        raise RandmaskError("no image from there on is classified correctly by both networks; untick the box")
    return chosen


def gallery_for(models: Mapping[str, nn.Module], attack: str, x: torch.Tensor, y: torch.Tensor,
                chosen: Sequence[int], *, dataset: str = "cifar10", progress: Progress | None = None) -> Gallery:
    """build_gallery for {normal name: model, masked name: model} on the chosen images of x, y."""
    names = tuple(models)
    if len(names) != 2:
        raise RandmaskError(f"a gallery compares two networks, got {len(names)}")
    index = list(chosen)
    return build_gallery(models[names[0]], models[names[1]], attack, x[index], y[index], names=names,
                         indices=index, dataset=dataset, progress=progress)


def perturbation_legend(vmax: float, width: int = 256, height: int = 14) -> np.ndarray:
    """height×width×3 uint8: the perturbation colour scale from −vmax (left) through 0 to +vmax (right)."""
    return diverging_rgb(np.tile(np.linspace(-vmax, vmax, width), (height, 1)), vmax)


def column_titles(gallery: Gallery) -> list[str]:
    """The page's five column headers: original, both adversarial images, both perturbations."""
    a, b = gallery.names
    return ["original", f"adversarial vs {a}", f"adversarial vs {b}", f"perturbation vs {a}",
            f"perturbation vs {b}"]


def display_rows(gallery: Gallery, factor: int = 5) -> list[dict]:
    """One row per image as the page shows it: "images", (C×H×W image, caption) for the original and both
    adversarial versions, each caption one line per model ('model: label conf%'), the original's led by its
    index and true class; and "perturbations", (H×W×3 tile upscaled by `factor`, its l-inf) against each source,
    all on the gallery's one colour scale."""
    vmax = gallery.perturbation_scale()
    rows = []
    for i, index in enumerate(gallery.indices):
        shown = []
        for column in gallery.column_keys():
            lines = gallery.caption(column, i).split(" · ")
            if column == "clean":
                lines.insert(0, f"#{index}, true: {CLASSES[gallery.dataset][int(gallery.labels[i])]}")
            image = gallery.clean[i] if column == "clean" else gallery.adv[column][i]
            shown.append((image, "  \n".join(lines)))
        tiles = []
        for name in gallery.names:
            rgb, _ = perturbation_image(gallery.adv[name][i], gallery.clean[i], vmax)
            tiles.append((upscale_nearest(rgb, factor), f"l-inf {float(gallery.linf[name][i]):.0f}/255"))
        rows.append({"images": shown, "perturbations": tiles})
    return rows


def gallery_png(gallery: Gallery, scale: int = 6) -> bytes:
    """The gallery as one PNG: per image a row original | adv vs normal | adv vs masked | both perturbations,
    nearest-neighbour upscaled, each tile captioned with both models' labels and confidences."""
    font = ImageFont.load_default()
    vmax = gallery.perturbation_scale()
    n = len(gallery.clean)
    h, w = gallery.clean.shape[2] * scale, gallery.clean.shape[3] * scale
    tile_w = max(w, 230)
    caption_h, header_h, pad = 30, 34, 8
    columns = ["original", f"adv. vs {gallery.names[0]}", f"adv. vs {gallery.names[1]}",
               f"perturbation vs {gallery.names[0]}", f"perturbation vs {gallery.names[1]}"]
    canvas = Image.new("RGB", (len(columns) * (tile_w + pad) + pad, header_h + n * (h + caption_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), f"{gallery.attack} · perturbation colour scale ±{vmax:g}/255 (blue −, red +)",
              fill="black", font=font)
    for j, title in enumerate(columns):
        draw.text((pad + j * (tile_w + pad), 18), title, fill="black", font=font)
    for i in range(n):
        top = header_h + i * (h + caption_h + pad)
        tiles = [(gallery.clean[i], gallery.caption("clean", i))]
        tiles += [(gallery.adv[name][i], gallery.caption(name, i)) for name in gallery.names]
        for j, (image, caption) in enumerate(tiles):
            left = pad + j * (tile_w + pad)
            canvas.paste(Image.fromarray(upscale_nearest(to_hwc_uint8(image), scale)), (left, top))
            for k, line in enumerate(caption.split(" · ")[:2]):
                draw.text((left, top + h + 2 + 12 * k), line[:40], fill="black", font=font)
        for j, name in enumerate(gallery.names):
            left = pad + (3 + j) * (tile_w + pad)
            rgb, _ = perturbation_image(gallery.adv[name][i], gallery.clean[i], vmax)
            canvas.paste(Image.fromarray(upscale_nearest(rgb, scale)), (left, top))
            draw.text((left, top + h + 2), f"l-inf {float(gallery.linf[name][i]):.0f}/255", fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
