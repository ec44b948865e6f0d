"""Adversarial image sets for the human study: lossless uint8 PNGs plus `meta.csv`.

Everything in meta.csv is measured on the saved PNGs themselves: the images are rounded to uint8 (keeping
the l-inf budget) before the source's prediction, the attack's success and the norms are computed, because
rounding can undo an attack. The folder layout and the columns are defined in randmask.core.set_schema, which
the study's reader (study.sets) uses too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from randmask.attacks import parse_attack
from randmask.core.errors import RandmaskError
from randmask.core.set_schema import META_COLUMNS
from randmask.experiments.evaluate import DEFAULT_BATCH, Progress, craft, predict, to_uint8, write_csv


def write_png(image: torch.Tensor, path: Path) -> None:
    """One C×H×W image in [0,1] on the 1/255 grid as a lossless PNG (greyscale for one channel)."""
    array = to_uint8(image.detach().cpu()).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def read_png(path: str | os.PathLike) -> torch.Tensor:
    """A saved PNG back as a C×H×W float image in [0,1]."""
    with Image.open(path) as img:
        array = np.asarray(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def save_adversarial_set(source: nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                         out_dir: str | os.PathLike, *, source_name: str, predict_models: Mapping[str, nn.Module]
                         | None = None, seed: int = 0, save_clean: bool = False, overwrite: bool = False,
                         batch_size: int = DEFAULT_BATCH, progress: Progress | None = None) -> list[dict]:
    """Attack `source` on images x (test-set positions `indices`), write DIR/images/*.png and DIR/meta.csv;
    returns the rows. Refuses to write into a folder that already has a meta.csv unless overwrite=True."""
    out = Path(out_dir)
    meta = out / "meta.csv"
    if meta.exists() and not overwrite:
        raise RandmaskError(f"{meta} already exists; choose another folder or pass overwrite=True")
    if len(indices) != len(x) or len(y) != len(x):
        raise RandmaskError(f"need one index and label per image, got {len(indices)}, {len(y)} for {len(x)}")
    spec = parse_attack(attack)
    crafted = craft(source, spec.build(source, seed=seed), x, y, quantize_images=True, batch_size=batch_size,
                    progress=progress)
    probs = crafted.logits.softmax(1)
    others = {name: predict(model, crafted.adv, batch_size=batch_size).argmax(1)
              for name, model in (predict_models or {}).items()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    if save_clean:
        (out / "images" / "clean").mkdir(exist_ok=True)
    rows = []
    for i, index in enumerate(indices.tolist()):
        name = f"images/{index:06d}.png"
        write_png(crafted.adv[i], out / name)
        pred = int(crafted.pred[i])
        row = {"index": index, "file": name, "true_label": int(y[i]), "source": source_name, "attack": str(spec),
               "source_pred": pred, "source_confidence": float(probs[i, pred]),
               "fooled": bool(crafted.fooled[i]), "attack_success": bool(crafted.success[i]),
               "linf": float(crafted.linf[i]), "l2": float(crafted.l2[i]), "seed": seed}
        if save_clean:
            row["clean_file"] = f"images/clean/{index:06d}.png"
            write_png(x[i], out / row["clean_file"])
        for model_name, preds in others.items():
            row[f"pred:{model_name}"] = int(preds[i])
        rows.append(row)
    write_csv(rows, meta, META_COLUMNS)
    return rows
