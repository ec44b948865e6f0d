"""What the Streamlit app computes, kept here (no streamlit import) so it is tested like the rest of the library.

    discover_models()            zoo checkpoints, the user's trained models, untrained stand-ins for missing ones
    load_entry(entry)            one of them as a model in eval mode
    mask_statistics(model)       per-layer drop statistics;  kind_comparison(): Random / SM / DC side by side
    input_coverage(keep)         which input pixels each stem channel can still see through its mask
    receptive_field(keep, r, c)  input pixels reaching one next-layer neuron through the masked stem
    upscale_nearest / perturbation_image / diverging_rgb    images for display, never smoothed
    build_gallery / gallery_png  original | adversarial vs Normal | vs masked | perturbations
    load_paper_tables / load_results / compare_with_paper / tradeoff_points    the robustness explorer

Where things live (environment variables override the defaults, e.g. for tests):
    RANDMASK_ZOO      shipped zoo, default assets/zoo              (<dataset>/<name>/config.json + weights)
    RANDMASK_RUNS     the app's training jobs, default runs/user   (<slug>/, see randmask.jobs)
    RANDMASK_RESULTS  reproduction CSVs, default results/
    RANDMASK_CACHE    crafted adversarial sets reused by reproduce, default runs/crafted
    RANDMASK_PAPER_TABLES  the paper's numbers, default assets/paper_tables.csv, else ../shared/paper/
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from randmask.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, read_config
from randmask.data import CLASSES, PROJECT_ROOT
from randmask.errors import CheckpointError, NotationError, RandmaskError
from randmask.masks import RandomMask, make_mask
from randmask.models import build_model
from randmask.notation import MASK_KINDS, canonical, parse_model

if TYPE_CHECKING:
    import pandas as pd

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------ locations
def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def zoo_root() -> Path:
    return _env_path("RANDMASK_ZOO", PROJECT_ROOT / "assets" / "zoo")


def user_runs_root() -> Path:
    return _env_path("RANDMASK_RUNS", PROJECT_ROOT / "runs" / "user")


def results_root() -> Path:
    return _env_path("RANDMASK_RESULTS", PROJECT_ROOT / "results")


def crafted_cache_root() -> Path:
    return _env_path("RANDMASK_CACHE", PROJECT_ROOT / "runs" / "crafted")


def paper_tables_path() -> Path | None:
    """The paper's numbers: $RANDMASK_PAPER_TABLES, assets/paper_tables.csv, or ../shared/paper beside the checkout."""
    if os.environ.get("RANDMASK_PAPER_TABLES"):
        return Path(os.environ["RANDMASK_PAPER_TABLES"]).expanduser()
    for candidate in (PROJECT_ROOT / "assets" / "paper_tables.csv",
                      PROJECT_ROOT.parent / "shared" / "paper" / "paper_tables.csv"):
        if candidate.exists():
            return candidate
    return None


# ------------------------------------------------------------------------------------------ model discovery
@dataclass(frozen=True)
class ModelEntry:
    """A model the app can offer: a zoo or user checkpoint, or an untrained stand-in built from notation."""

    key: str  # unique: "zoo:cifar10/0.7-Shallow", "user:0.7-Shallow-2", "untrained:cifar10/0.7-Shallow"
    notation: str
    dataset: str
    source: str  # "zoo" | "user" | "untrained"
    folder: str | None = None
    width: int = 16
    seed: int = 0
    mask_seed: int = 0
    clean_accuracy: float | None = None
    role: str = ""

    @property
    def trained(self) -> bool:
        return self.source != "untrained"

    @property
    def name(self) -> str:
        """Notation plus seeds when they are not 0: what tables and legends call the model."""
        extra = []
        if self.seed:
            extra.append(f"seed {self.seed}")
        if self.mask_seed:
            extra.append(f"mask seed {self.mask_seed}")
        return self.notation + (f" ({', '.join(extra)})" if extra else "")

    @property
    def badge(self) -> str:
        return {"zoo": "zoo", "user": "yours", "untrained": "UNTRAINED"}[self.source]

    @property
    def label(self) -> str:
        """One line for pickers: name, data set, accuracy or the untrained badge."""
        acc = f" · {100 * self.clean_accuracy:.1f}%" if self.clean_accuracy is not None else ""
        where = "" if self.dataset == "cifar10" else f" [{self.dataset}]"
        tag = "" if self.source == "zoo" else f" ({self.badge})"
        if self.source == "user":
            tag = f" (yours: {Path(self.folder or '').name})"
        return f"{self.name}{where}{acc}{tag}"

    @property
    def is_masked(self) -> bool:
        return not parse_model(self.notation).is_normal


@dataclass
class Catalog:
    entries: list[ModelEntry]
    problems: list[str] = field(default_factory=list)  # folders that could not be read, one line each

    def get(self, key: str) -> ModelEntry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise RandmaskError(f"no model {key!r} (it may have been removed); pick another")

    def for_dataset(self, dataset: str) -> list[ModelEntry]:
        return [e for e in self.entries if e.dataset == dataset]

    @property
    def datasets(self) -> list[str]:
        return sorted({e.dataset for e in self.entries}, key=lambda d: (d != "cifar10", d))


def _entry_from_folder(folder: Path, key: str, source: str) -> ModelEntry:
    config = read_config(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    canonical(config["notation"])  # a notation this code cannot read is a problem, not a crash later
    acc = config.get("clean_accuracy")
    return ModelEntry(key=key, notation=canonical(config["notation"]), dataset=config["dataset"], source=source,
                      folder=str(folder), width=int(config["width"]), seed=int(config["seed"]),
                      mask_seed=int(config["mask_seed"]), clean_accuracy=float(acc) if acc is not None else None,
                      role=str(config.get("role", "") or ""))


def discover_models(zoo: Path | None = None, runs: Path | None = None, include_untrained: bool = True) -> Catalog:
    """Zoo checkpoints (zoo/<dataset>/<name>/), finished user runs (runs/<name>/) and, for every planned zoo
    entry that is not trained yet, an untrained stand-in built from its notation (width 16)."""
    from randmask.zoo import ENSEMBLES, ZOO

    zoo, runs = zoo or zoo_root(), runs or user_runs_root()
    entries, problems = [], []
    if zoo.is_dir():
        for config in sorted(zoo.glob(f"*/*/{CONFIG_FILE}")):
            folder = config.parent
            if folder.name.endswith(".tmp"):
                continue  # an export in progress
            name = f"{folder.parent.name}/{folder.name}"
            try:
                entries.append(_entry_from_folder(folder, f"zoo:{name}", "zoo"))
            except (RandmaskError, OSError, ValueError, KeyError) as exc:
                problems.append(f"zoo model {name}: {exc}")
    roles = {e.name: e.role for e in ZOO}
    entries = [e if e.role else _with_role(e, roles) for e in entries]
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            if not (folder / WEIGHTS_FILE).exists():
                continue  # still training, cancelled or failed: the Train page shows those
            try:
                entries.append(_entry_from_folder(folder, f"user:{folder.name}", "user"))
            except (RandmaskError, OSError, ValueError, KeyError) as exc:
                problems.append(f"your model {folder.name}: {exc}")
    if include_untrained:
        have = {e.key.removeprefix("zoo:") for e in entries if e.source == "zoo"}
        planned = [(e.name, e.notation, e.dataset, e.seed, e.mask_seed, e.role) for e in ZOO]
        planned += [(name, notation, "cifar10", 0, 0, "ensemble") for name, (notation, _) in ENSEMBLES.items()]
        for name, notation, dataset, seed, mask_seed, role in planned:
            if name not in have:
                entries.append(ModelEntry(key=f"untrained:{name}", notation=canonical(notation), dataset=dataset,
                                          source="untrained", seed=seed, mask_seed=mask_seed, role=role))
    return Catalog(entries, problems)


def _with_role(entry: ModelEntry, roles: Mapping[str, str]) -> ModelEntry:
    from dataclasses import replace

    return replace(entry, role=roles.get(entry.key.removeprefix("zoo:"), ""))


def unique_names(entries: Sequence[ModelEntry]) -> list[str]:
    """Display names for legends and tables, made distinct: a clash gets its badge or folder appended."""
    names = [e.name for e in entries]
    for i, entry in enumerate(entries):
        if names.count(entry.name) > 1:
            names[i] = f"{entry.name} ({Path(entry.folder).name if entry.source == 'user' else entry.badge})"
    for i in range(len(names)):  # still equal (two user runs of one notation): number them
        if names.count(names[i]) > 1:
            same = [j for j, n in enumerate(names) if n == names[i]]
            for k, j in enumerate(same):
                names[j] = f"{names[j]} #{k + 1}"
    return names


def shuffle_grids(size: int, largest: int = 16) -> list[int]:
    """Grid sizes k (2..largest) that cut a size×size image into equal k×k patches: 2, 4, 8, 16 for 32."""
    return [k for k in range(2, largest + 1) if size % k == 0]


def load_entry(entry: ModelEntry, device: str | torch.device | None = None) -> nn.Module:
    """The entry's model in eval mode (checkpoints are rebuilt from JSON + safetensors, never unpickled)."""
    if entry.folder:
        model, _ = load_model(entry.folder, device)
        return model
    model = build_model(entry.notation, dataset=entry.dataset, width=entry.width, mask_seed=entry.mask_seed,
                        seed=entry.seed).eval()
    return model.to(device) if device is not None else model


def default_picks(entries: Sequence[ModelEntry], limit: int = 3) -> list[str]:
    """Keys preselected in the picker: Normal ResNet-18 and the study's masked models, trained copies first."""
    wanted = ["Normal ResNet-18", "0.9-Shallow", "0.7-Shallow", "0.5-Shallow"]
    picks: list[str] = []
    for notation in wanted:
        same = [e for e in entries if e.notation == notation and e.seed == 0 and e.mask_seed == 0]
        same.sort(key=lambda e: ("zoo", "user", "untrained").index(e.source))
        if same:
            picks.append(same[0].key)
    if not picks:
        picks = [e.key for e in entries[:limit]]
    return picks[:limit]


def default_transfer(entries: Sequence[ModelEntry], picked: Sequence[str] = ()) -> tuple[str | None, list[str]]:
    """(source key, target keys) a new transfer evaluation starts from: the paper's main black-box source
    (DenseNet-121, else another trained unmasked net) against Normal ResNet-18 and 0.7-Shallow, never the source
    against itself (which only says that the images fool the source). Trained models first, then the picks."""
    def first(notation: str) -> ModelEntry | None:
        same = [e for e in entries if e.notation == notation and e.trained and e.seed == 0 and e.mask_seed == 0
                and not e.role.startswith("control")]  # not an accuracy-matched control of the same notation
        same.sort(key=lambda e: ("zoo", "user").index(e.source))
        return same[0] if same else None

    unmasked = [e for e in entries if not e.is_masked]
    source = (first("DenseNet-121") or first("VGG-19") or first("Normal ResNet-18")
              or next((e for e in unmasked if e.trained), None) or (unmasked or list(entries) or [None])[0])
    if source is None:
        return None, []
    targets = [e.key for e in (first("Normal ResNet-18"), first("0.7-Shallow")) if e is not None]
    targets += [k for k in picked if k not in targets]
    return source.key, [k for k in targets if k != source.key][:3]


DATASET_NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "tinyimagenet10": "Tiny ImageNet (10 classes)"}


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def trained_summary(catalog: Catalog, dataset: str) -> str:
    """The picker's count, saying which data set it counts and how that relates to every trained model (the
    README's zoo table counts all data sets)."""
    here = catalog.for_dataset(dataset)
    n_here = sum(e.trained for e in here)
    trained = [e for e in catalog.entries if e.trained]
    text = f"{n_here} trained {dataset_name(dataset)} model{'s' if n_here != 1 else ''} to pick from"
    if len(trained) != n_here:
        where = " and ".join(dataset_name(d) for d in catalog.datasets if any(e.dataset == d for e in trained))
        zoo, yours = sum(e.source == "zoo" for e in trained), sum(e.source == "user" for e in trained)
        text += f"; {len(trained)} over {where}" + (f" ({zoo} in the zoo, {yours} yours)" if yours else
                                                   " (the zoo, as in the README)")
    stand_ins = len(here) - n_here
    if stand_ins:
        text += f". Plus {stand_ins} UNTRAINED stand-in{'s' if stand_ins != 1 else ''} for planned models not trained yet"
    return text + "."


def zoo_overview(zoo_rows: Sequence[Mapping], entries: Sequence[ModelEntry]) -> list[dict]:
    """The Home page's zoo table: every planned zoo model (zoo.list_zoo) and the user's own, named by notation
    and seeds, with status, clean accuracy as text (MISSING when not trained) and what the paper uses it for."""
    from randmask.zoo import ZOO

    labels = {e.name: e.label for e in ZOO}  # an accuracy-matched control: 'Normal ResNet-18 (4 epochs)'
    rows = []
    for row in zoo_rows:
        if row["trained"]:
            status = "trained" if row["current"] else f"trained (older recipe: {row['epochs']} epochs)"
        else:
            status = "not trained yet"
        seeds = re.search(r"-s(\d+)m(\d+)", row["name"])  # the zoo folder's suffix for seeds other than 0
        name = ModelEntry("", labels.get(row["name"], row["notation"]), row["dataset"], "zoo",
                          seed=int(seeds[1]) if seeds else 0, mask_seed=int(seeds[2]) if seeds else 0).name
        accuracy = None if row["clean_accuracy"] is None else 100 * row["clean_accuracy"]
        rows.append({"data set": dataset_name(row["dataset"]), "model": name, "status": status,
                     "accuracy (%)": number_text(accuracy), "used for": row["role"] or MISSING})
    for entry in entries:
        if entry.source == "user":
            accuracy = None if entry.clean_accuracy is None else 100 * entry.clean_accuracy
            rows.append({"data set": dataset_name(entry.dataset), "model": entry.name,
                         "status": f"yours: {Path(entry.folder or '').name}", "accuracy (%)": number_text(accuracy),
                         "used for": MISSING})
    return rows


# ------------------------------------------------------------------------------------------------- images
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


# ------------------------------------------------------------------------------------------------- masks
def mask_modules(model: nn.Module) -> list[tuple[str, RandomMask]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RandomMask)]


def get_mask(model: nn.Module, name: str) -> torch.Tensor:
    """The bool keep-mask (C×H×W, True = kept) of the masked layer `name`."""
    for layer, module in mask_modules(model):
        if layer == name:
            return module.mask.detach().cpu()
    raise RandmaskError(f"the model has no masked layer {name!r}")


def mask_statistics(model: nn.Module) -> list[dict]:
    """One row per masked layer: where it is, its nominal and measured drop ratio, and how the drops spread."""
    rows = []
    for name, module in mask_modules(model):
        keep = module.mask.detach().cpu()
        c, h, w = keep.shape
        dropped_per_channel = (~keep).flatten(1).float().mean(1)
        dropped_everywhere = (~keep).all(0)
        rows.append({
            "layer": name, "block": module.block, "kind": module.kind, "shape": f"{c}×{h}×{w}",
            "ratio": module.ratio, "measured_drop_ratio": 1.0 - keep.float().mean().item(),
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
    for name, module in mask_modules(model):
        if module.block == 0:
            return name, module.mask.detach().cpu()
    return None


# --------------------------------------------------------------------------------------- predictions
def predictions(models: Mapping[str, nn.Module], x: torch.Tensor, dataset: str = "cifar10") -> list[dict]:
    """For each model and image (floats in [0,1]): predicted class, its name and softmax confidence."""
    from randmask.evaluate import predict

    rows = []
    for name, model in models.items():
        prob = predict(model, x).softmax(1).cpu()
        conf, pred = prob.max(1)
        for i in range(len(x)):
            rows.append({"model": name, "image": i, "pred": int(pred[i]), "label": CLASSES[dataset][int(pred[i])],
                         "confidence": float(conf[i])})
    return rows


def rows_csv(rows: Sequence[Mapping]) -> bytes:
    """Protocol rows as CSV bytes (columns in first-seen order) for a download button."""
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


# ------------------------------------------------------------------------------------------ adversarial gallery
ATTACK_KINDS = ("FGSM", "PGD", "CW", "Square")


def attack_notation(kind: str, eps: float = 16, *, kappa: float = 40, cw_search: int = 5, cw_steps: int = 50,
                    queries: int = 300) -> str:
    """Canonical attack notation for the gallery's controls (eps in 0-255 units). PGD uses the paper's step
    rule (step 1), CW a short binary search and Square a small query budget so a CPU answers in seconds."""
    from randmask.attacks import canonical_attack

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

    def perturbation_scale(self) -> float:
        """Common colour scale (0-255 units) for every perturbation shown: eps, or the largest change."""
        if self.eps is not None:
            return float(self.eps)
        return max(float((a - self.clean).abs().amax() * 255) for a in self.adv.values()) or 1.0


def build_gallery(normal: nn.Module, masked: nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor, *,
                  names: tuple[str, str], indices: Sequence[int] | None = None, dataset: str = "cifar10",
                  seed: int = 0, progress: Progress | None = None) -> Gallery:
    """Attack the normal and the masked model on the same images (floats in [0,1]) and record both models'
    predictions on the clean and both adversarial sets. Images are rounded to uint8 as they would be stored."""
    from randmask.attacks import parse_attack
    from randmask.evaluate import Work, craft, predict

    if names[0] == names[1]:
        raise RandmaskError("pick two different models: a normal one and a masked one")
    spec = parse_attack(attack)
    work = Work(2 * len(x), progress)
    sources = {names[0]: normal, names[1]: masked}
    adv, linf = {}, {}
    for name, model in sources.items():
        crafted = craft(model, spec.build(model, seed=seed), x, y, seed=seed, quantize_images=True,
                        progress=work.phase(len(x)))
        adv[name], linf[name] = crafted.adv.cpu(), crafted.linf.cpu()
    columns = {"clean": x.cpu(), **adv}
    preds = {column: {name: predict(model, images).softmax(1).cpu() for name, model in sources.items()}
             for column, images in columns.items()}
    return Gallery(str(spec), names, list(indices) if indices is not None else list(range(len(x))), y.cpu(),
                   x.cpu(), adv, preds, linf, dataset, spec.eps)


def gallery_png(gallery: Gallery, scale: int = 6) -> bytes:
    """The gallery as one PNG: per image a row original | adv vs normal | adv vs masked | both perturbations,
    nearest-neighbour upscaled, each tile captioned with both models' labels and confidences."""
    from PIL import Image, ImageDraw, ImageFont

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


# ------------------------------------------------------------------------------------ paper and our results
PAPER_TABLES = {
    1: "Table 1 · Madry et al.'s black-box setting",
    3: "Table 3 · patch shuffle (ImageNet in the paper)",
    4: "Table 4 · white-box attacks",
    5: "Table 5 · gray-box transfer (FGSM16)",
    6: "Table 6 · MNIST black-box (DenseNet-121 source)",
    7: "Table 7 · transfer from DenseNet-121",
    8: "Table 8 · transfer from ResNet-18",
    9: "Table 9 · transfer from ResNet-50",
    10: "Table 10 · transfer from SENet-18",
    11: "Table 11 · transfer from VGG-19",
}
TABLE_PROTOCOL = {1: "madry", 3: "shuffle", 4: "whitebox", 5: "graybox", 6: "mnist", 7: "transfer", 8: "transfer",
                  9: "transfer", 10: "transfer", 11: "transfer"}
RESULT_COLUMNS = ("source", "target", "attack", "n", "accuracy", "ci_low", "ci_high")


def model_key(name) -> str:
    """A name compared across the paper's file and ours: canonical notation where it parses, else as written.
    A trailing remark in parentheses is dropped ('0.85-Shallow (Random Mask)'), except those that name a
    different model: the gray-box '(other init)' and an accuracy-matched control's '(4 epochs)'."""
    if not isinstance(name, str) or not name.strip():
        return ""
    text = name.strip()
    suffix = ""
    if text.endswith(")") and " (" in text:
        text, _, remark = text.partition(" (")
        suffix = f" ({remark}" if remark == "other init)" or re.fullmatch(r"\d+ epochs(, [\d,]+ images)?\)", remark) else ""
    try:
        return canonical(text) + suffix
    except NotationError:
        return text + suffix


def attack_key(name) -> str:
    """'PGD 7x2 eps8' and 'pgd 7x2 eps8', 'shuffle 2x2' and 'shuffle2x2' compare equal."""
    if not isinstance(name, str):
        return ""
    return re.sub(r"\s+", "", name).lower()


def load_paper_tables(path: Path | None = None):
    """The paper's numbers as a DataFrame (table, setting, source, target, attack, metric, percent)."""
    import pandas as pd

    path = path or paper_tables_path()
    if path is None or not Path(path).exists():
        raise RandmaskError("the paper's tables were not found: set RANDMASK_PAPER_TABLES to paper_tables.csv")
    frame = pd.read_csv(path, dtype={"table": "Int64"})
    missing = {"table", "source", "target", "attack", "metric", "percent"} - set(frame.columns)
    if missing:
        raise RandmaskError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
    return frame


def load_results(root: Path | None = None):
    """Every CSV under results/ with at least source, target, attack, n, accuracy, ci_low, ci_high, joined into
    one DataFrame with a `file` column; returns (frame, problems) - unreadable files are named, not fatal."""
    import pandas as pd

    root = root or results_root()
    frames, problems = [], []
    for path in sorted(root.rglob("*.csv")) if root.is_dir() else []:
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except Exception as exc:  # pandas raises several parser error types
            problems.append(f"{path.name}: cannot read ({exc})")
            continue
        missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
        if missing:
            problems.append(f"{path.name}: no column(s) {', '.join(missing)}; skipped")
            continue
        frame["file"] = str(path.relative_to(root))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "metric", "protocol", "file"]), problems
    return pd.concat(frames, ignore_index=True), problems


def _our_attack(row) -> str:
    paper = row.get("paper_attack")
    return attack_key(paper if isinstance(paper, str) and paper else row.get("attack"))


def result_target_key(row) -> str:
    """Gray-box rows name the relation in a column; the paper writes '0.5-Shallow (other init)', '0.5-ShallowDIF'."""
    target = model_key(str(row.get("target", "")).split(" (")[0])
    relation = row.get("relation")
    if relation == "other init":
        return f"{target} (other init)"
    if relation == "DIF":
        return f"{target}DIF"
    return target


TABLE_DATASET = {6: "mnist"}  # every other table of the paper is CIFAR-10
NOT_MEASURED = "not measured here"
NOT_TRAINED = "not trained here"
NOT_A_NOTATION = "not trained here (no notation of ours names it)"


def table_dataset(table: int) -> str:
    return TABLE_DATASET.get(table, "cifar10")


def trained_model_keys(entries: Sequence[ModelEntry]) -> set[str]:
    """The trained entries as the paper's tables name models (model_key): the notation, plus '<notation> (other
    init)' for a seed other than 0 and '<notation>DIF' for another mask seed (Table 5's names)."""
    keys: set[str] = set()
    for entry in entries:
        if not entry.trained:
            continue
        keys.add(entry.notation)
        if entry.seed and not entry.mask_seed:
            keys.add(f"{entry.notation} (other init)")
        if entry.mask_seed and not entry.seed:
            keys.add(f"{entry.notation}DIF")
    return keys


def _runs_hint() -> str:
    """Where the app looks for your models, as a command line would name it (relative inside the project)."""
    root = user_runs_root()
    try:
        return str(root.resolve().relative_to(PROJECT_ROOT.resolve()))
    except ValueError:
        return str(root)


def train_command(name: str, dataset: str = "cifar10") -> str | None:
    """The command that trains the model a paper table names, into the folder the app reads your models from
    (the zoo's command where the zoo plans it); None when no notation of ours names it."""
    from randmask.notation import slug
    from randmask.zoo import ENSEMBLES, ZOO

    key, seed, mask_seed = model_key(name), 0, 0
    if key.endswith(" (other init)"):
        key, seed = key.removesuffix(" (other init)"), 1
    elif key.endswith("DIF"):
        key, mask_seed = key.removesuffix("DIF"), 1
    try:
        notation = canonical(key)
    except NotationError:
        return None
    planned = [e.name for e in ZOO if (canonical(e.notation), e.dataset, e.seed, e.mask_seed)
               == (notation, dataset, seed, mask_seed)]
    planned += [n for n, (text, _) in ENSEMBLES.items()
                if (canonical(text), n.split("/")[0], seed, mask_seed) == (notation, dataset, 0, 0)]
    if planned:
        return f"python -m randmask zoo train --only {planned[0]}"
    folder = slug(notation) + (f"-{dataset}" if dataset != "cifar10" else "")
    folder += f"-s{seed}m{mask_seed}" if seed or mask_seed else ""
    return (f'python -m randmask train "{notation}" --preset quick'
            + (f" --dataset {dataset}" if dataset != "cifar10" else "")
            + (f" --seed {seed}" if seed else "") + (f" --mask-seed {mask_seed}" if mask_seed else "")
            + f" --out {_runs_hint()}/{folder}")


def missing_note(target: str, dataset: str = "cifar10", trained: set[str] | None = None) -> str:
    """Why a paper row has no number of ours: the target is trained but not measured, or not trained here (with
    the command that trains it). Without `trained` we cannot tell: 'not measured here'."""
    if trained is None or model_key(target) in trained:
        return NOT_MEASURED
    command = train_command(target, dataset)
    return f"{NOT_TRAINED}: {command}" if command else NOT_A_NOTATION


def compare_with_paper(paper: pd.DataFrame, ours: pd.DataFrame | None, table: int,
                       trained: set[str] | None = None) -> pd.DataFrame:
    """One row per (target, attack, metric) of a paper table: the paper's percent beside ours (percent, 95%
    interval, n, difference) where our results have the same source, target, attack and metric. `note` says
    why a row has none of ours (missing_note; `trained`: trained_model_keys of the table's data set)."""
    import pandas as pd

    part = paper[paper["table"] == table].copy()
    if part.empty:
        raise RandmaskError(f"the paper's file has no table {table}; tables: {sorted(paper['table'].dropna().unique())}")
    part["source_key"] = part["source"].map(model_key)
    part["target_key"] = part["target"].map(model_key)
    part["attack_key"] = part["attack"].map(attack_key)
    columns = ["source", "target", "attack", "metric", "paper", "ours", "ours_low", "ours_high", "n", "difference",
               "file", "note"]
    dataset = table_dataset(table)
    if ours is None or ours.empty:
        out = part.rename(columns={"percent": "paper"})
        for col in ("ours", "ours_low", "ours_high", "n", "difference", "file"):
            out[col] = math.nan if col != "file" else ""
        out["source"] = out["source"].where(out["source"].map(lambda v: isinstance(v, str)), "")
        out["attack"] = out["attack"].where(out["attack"].map(lambda v: isinstance(v, str)), "")
        out["note"] = [missing_note(t, dataset, trained) for t in out["target"]]
        return out[columns].reset_index(drop=True)
    ours = ours.copy()
    if "protocol" in ours.columns:
        ours = ours[ours["protocol"].fillna(TABLE_PROTOCOL[table]) == TABLE_PROTOCOL[table]]
    if "metric" not in ours.columns:
        ours["metric"] = "defense_rate"
    records = ours.to_dict("records")
    index: dict[tuple, dict] = {}
    for row in records:
        metric = row.get("metric") or "defense_rate"
        clean = metric == "clean_accuracy"
        key = ("" if clean else model_key(row.get("source")), result_target_key(row), "" if clean else _our_attack(row),
               metric)
        index[key] = row  # a later file wins: results are listed in name order
    rows = []
    for prow in part.to_dict("records"):
        clean = prow["metric"] == "clean_accuracy"
        key = ("" if clean else prow["source_key"], prow["target_key"], "" if clean else prow["attack_key"],
               prow["metric"])
        mine = index.get(key)
        source = prow["source"] if isinstance(prow["source"], str) else ""
        row = {"source": source, "target": prow["target"], "attack": prow["attack"] if isinstance(prow["attack"], str) else "",
               "metric": prow["metric"], "paper": float(prow["percent"]), "ours": math.nan, "ours_low": math.nan,
               "ours_high": math.nan, "n": math.nan, "difference": math.nan, "file": "",
               "note": missing_note(prow["target"], dataset, trained)}
        if mine is not None:
            row.update(ours=100 * float(mine["accuracy"]), ours_low=100 * float(mine["ci_low"]),
                       ours_high=100 * float(mine["ci_high"]), n=float(mine["n"]), file=mine.get("file", ""), note="")
            row["difference"] = row["ours"] - row["paper"]
            if not row["n"] or row["ours"] != row["ours"]:  # n = 0: the attack fooled the source on no image
                row["note"] = "no estimate here (n = 0: the attack fooled the source on none of its images)"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


MISSING = "–"  # what a table cell shows where there is no number (never 'None' or 'nan')


def number_text(value: float | None, digits: int = 1) -> str:
    """A number for a table cell, always with `digits` decimals; MISSING for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def comparison_column(attack: str, metric: str) -> str:
    return attack or ("clean" if metric == "clean_accuracy" else metric)


def _status(notes: Sequence[str]) -> str:
    """One word on a target's row: measured (all its numbers, or some of them) or why not (the note's head)."""
    measured = [n == "" for n in notes]
    if all(measured):
        return "measured"
    if any(measured):
        return "partly measured"
    return notes[0].split(":")[0]


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    """compare_with_paper's rows as the table the app shows: one row per target, its status ('here'), then
    '<column> · paper' and, where we measured any target in that column, '<column> · ours' beside it; every
    cell is text with one decimal, or MISSING."""
    import pandas as pd

    comp = comp.assign(column=[comparison_column(a, m) for a, m in zip(comp["attack"], comp["metric"], strict=True)])
    columns = list(dict.fromkeys(comp["column"]))
    measured = set(comp.loc[comp["ours"].notna(), "column"])  # an 'ours' column only where we have a number
    rows = []
    for target, part in comp.groupby("target", sort=False):
        row = {"target": target, "here": _status(part["note"].tolist())}
        for column in columns:
            cells = part[part["column"] == column]
            row[f"{column} · paper"] = number_text(cells["paper"].iloc[0] if len(cells) else None)
            if column in measured:
                row[f"{column} · ours"] = number_text(cells["ours"].iloc[0] if len(cells) else None)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_details(comp: pd.DataFrame) -> pd.DataFrame:
    """compare_with_paper's rows for display: readable headers, numbers as text with MISSING for none."""
    import pandas as pd

    return pd.DataFrame({
        "source": comp["source"].replace("", MISSING), "target": comp["target"],
        "attack": [comparison_column(a, m) for a, m in zip(comp["attack"], comp["metric"], strict=True)],
        "metric": comp["metric"].str.replace("_", " "),
        "paper %": comp["paper"].map(number_text), "ours %": comp["ours"].map(number_text),
        "ours 95% CI": [MISSING if lo != lo else f"{lo:.1f}–{hi:.1f}"
                        for lo, hi in zip(comp["ours_low"], comp["ours_high"], strict=True)],
        "n": comp["n"].map(lambda v: number_text(v, 0)),
        "ours − paper": comp["difference"].map(lambda v: MISSING if v != v else f"{v:+.1f}"),
        "why no number of ours": comp["note"].replace("", MISSING),
        "results file": comp["file"].replace("", MISSING)})


def transfer_table(rows: Sequence[Mapping]) -> list[dict]:
    """A transfer run's rows (protocols.transfer) as the app shows them: per target its defense rate with the
    95% interval, n and clean accuracy, as text; MISSING where nothing was measured (n = 0)."""
    clean = {r["target"]: r for r in rows if r["metric"] == "clean_accuracy"}
    table = []
    for r in rows:
        if r["metric"] != "defense_rate":
            continue
        c = clean.get(r["target"])
        table.append({"target": r["target"],
                      "defense rate (%)": number_text(100 * r["accuracy"] if r["n"] else None),
                      "95% CI (%)": f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}" if r["n"] else MISSING,
                      "n": str(int(r["n"])),
                      "clean accuracy (%)": number_text(100 * c["accuracy"] if c else None)})
    return table


def untrained_targets(comp: pd.DataFrame) -> list[tuple[str, str]]:
    """[(target, the command that trains it)] for the table's targets not trained here, in table order."""
    prefix = f"{NOT_TRAINED}: "
    out = dict.fromkeys(t for t, n in zip(comp["target"], comp["note"], strict=True) if n.startswith(prefix))
    notes = dict(zip(comp["target"], comp["note"], strict=True))
    return [(t, notes[t].removeprefix(prefix)) for t in out]


def results_without_paper(paper, ours, table: int) -> list[dict]:
    """Our defense-rate rows of a table's protocol that no number of the paper's table matches (same source,
    target, attack): measured beyond the paper, so a side-by-side table would otherwise drop them."""
    part = paper[(paper["table"] == table) & (paper["metric"] != "clean_accuracy")]
    known = {(model_key(r["source"]), model_key(r["target"]), attack_key(r["attack"])) for r in part.to_dict("records")}
    if ours is None or ours.empty:
        return []
    frame = ours
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"].fillna(TABLE_PROTOCOL[table]) == TABLE_PROTOCOL[table]]
    return [r for r in frame.to_dict("records") if r.get("metric", "defense_rate") == "defense_rate"
            and (model_key(r.get("source")), result_target_key(r), _our_attack(r)) not in known]


def paper_shuffle_table(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 3 as printed: one row per model, a column per grid, percent with two decimals."""
    import pandas as pd

    part = paper[paper["table"] == 3]
    rows = {}
    for r in part.to_dict("records"):
        grid = re.sub(r"(?i)shuffle\s*(\d+)x(\d+)", r"\1×\2", str(r["attack"]))
        rows.setdefault(r["target"], {"model": r["target"]})[f"{grid} (%)"] = number_text(r["percent"], 2)
    return pd.DataFrame(list(rows.values()))


def shallow_ratio(name) -> float | None:
    """0 for Normal ResNet-18, r for 'r-Shallow', None for anything else (Figure 7's x-Shallow family)."""
    key = model_key(name)
    if key == "Normal ResNet-18":
        return 0.0
    try:
        spec = parse_model(key)
    except NotationError:
        return None
    if spec.ensemble == 1 and len(spec.masks) == 1:
        term = spec.masks[0]
        if term.part == "Shallow" and term.kind == "random" and term.multiplier == 1:
            return term.ratio
    return None


def tradeoff_points(paper, ours, source: str, attack: str):
    """Figure 7: for Normal ResNet-18 and every r-Shallow model, clean accuracy against defense rate under one
    source and attack, from the paper (its Tables 7-11) and from our transfer results where present. Percent;
    our points carry 95% intervals."""
    import pandas as pd

    src, atk = model_key(source), attack_key(attack)
    rows = []
    part = paper[paper["table"].isin([7, 8, 9, 10, 11]) & (paper["source"].map(model_key) == src)]
    clean = {model_key(r["target"]): r["percent"] for r in part[part["metric"] == "clean_accuracy"].to_dict("records")}
    for r in part[part["metric"] == "defense_rate"].to_dict("records"):
        ratio, target = shallow_ratio(r["target"]), model_key(r["target"])
        if ratio is not None and attack_key(r["attack"]) == atk and target in clean:
            rows.append({"origin": "paper", "target": target, "ratio": ratio, "clean_accuracy": float(clean[target]),
                         "defense_rate": float(r["percent"])})
    if ours is not None and not ours.empty:
        frame = ours.copy()
        if "protocol" in frame.columns:
            frame = frame[frame["protocol"].fillna("transfer") == "transfer"]
        if "dataset" in frame.columns:
            frame = frame[frame["dataset"].fillna("cifar10").isin(["cifar10", ""])]
        if "metric" not in frame.columns:
            frame["metric"] = "defense_rate"
        records = frame.to_dict("records")
        ours_clean = {model_key(r["target"]): r for r in records if r["metric"] == "clean_accuracy"}
        for r in records:
            ratio, target = shallow_ratio(r["target"]), model_key(r["target"])
            if (r["metric"] != "defense_rate" or ratio is None or target not in ours_clean
                    or model_key(r["source"]) != src or _our_attack(r) != atk):
                continue
            c = ours_clean[target]
            rows.append({"origin": "ours", "target": target, "ratio": ratio,
                         "clean_accuracy": 100 * float(c["accuracy"]), "defense_rate": 100 * float(r["accuracy"]),
                         "defense_low": 100 * float(r["ci_low"]), "defense_high": 100 * float(r["ci_high"]),
                         "clean_low": 100 * float(c["ci_low"]), "clean_high": 100 * float(c["ci_high"])})
    columns = ["origin", "target", "ratio", "clean_accuracy", "defense_rate", "defense_low", "defense_high",
               "clean_low", "clean_high"]
    return pd.DataFrame(rows, columns=columns).sort_values(["origin", "ratio"]).reset_index(drop=True)


def paper_sources(paper) -> list[str]:
    """The black-box sources of Tables 7-11, in table order."""
    part = paper[paper["table"].isin([7, 8, 9, 10, 11])]
    return list(dict.fromkeys(part["source"].dropna()))


def paper_attacks(paper, source: str) -> list[str]:
    part = paper[paper["table"].isin([7, 8, 9, 10, 11]) & (paper["source"].map(model_key) == model_key(source))]
    return list(dict.fromkeys(part["attack"].dropna()))

