"""What the paper study is made of, decided before any work: its options and their checks, the zoo's nets
it attacks, its conditions, and the CIFAR-10 test images it may show. Building the sets and the study from
these is study.paper_study's.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from randmask.core.safe_files import read_regular_file
from randmask.core.settings import zoo_root

from .design import DesignError, StudyConfig, check_numbers
from .sets import unambiguous_indices

NORMAL = "Normal ResNet-18"
DATASET = "cifar10"
DEFAULT_MASKED = ("0.9-Shallow",)
DEFAULT_IMAGES = 100
DEFAULT_EPS = 16
EPS_RANGE = (1, 64)  # whole grey levels: a stored uint8 image moves by floor(eps); the paper's attacks use 8-32
DEFAULT_UNAMBIGUOUS = 0.98
DEFAULT_PER_CONDITION = 6  # images of each condition one participant sees, unless --items-per-participant says
CATCH_IMAGES = 30
PRACTICE_IMAGES = 3
MAX_CONFIG_BYTES = 1 << 20
# a masked net's notation starts with its drop ratio and block kind: 0.9-Shallow, 0.5-ShallowDC, 0.3-Deep, ...
_MASKED = re.compile(r"[0-9]*\.?[0-9]+-(?:Shallow|Deep)")


class PaperStudyError(DesignError):
    """The paper study cannot be built as asked; the message is one line."""


@dataclass(frozen=True)
class Net:
    name: str  # the zoo's notation, which randmask writes as the set's source
    folder: Path


@dataclass(frozen=True)
class Condition:
    attack: str  # paper notation: FGSM16, PGD16
    net: Net

    @property
    def name(self) -> str:
        """The study's condition name, as study.sets.condition_name gives it for the set's rows."""
        return f"{self.attack}-vs-{self.net.name}"

    @property
    def folder(self) -> str:
        return f"{self.attack}-vs-{self.net.folder.name}"


@dataclass(frozen=True)
class PaperStudyOptions:
    name: str
    images: int = DEFAULT_IMAGES
    eps: int = DEFAULT_EPS
    masked: tuple[str, ...] = DEFAULT_MASKED
    unambiguous: float = DEFAULT_UNAMBIGUOUS
    items_per_participant: int | None = None  # None: DEFAULT_PER_CONDITION per condition
    catch_per_participant: int = 3
    labels_per_item: int = 1  # at least; the plan may ask for more
    difference: float = 0.10
    presentation_ms: int | None = None
    title: str = ""
    completion_code: str | None = None
    redirect_url: str | None = None
    seed: int = 0



# ------------------------------------------------------------------------------------------------ the zoo
def zoo_nets(root: Path | None = None, dataset: str = DATASET) -> dict[str, Path]:
    """Notation -> folder of each shipped model of `dataset` at seeds 0 and the zoo's width, from the config.json
    files alone (no torch); accuracy-matched controls (a `label` in their config) and unreadable folders are left
    out, as the zoo's reference names them not by notation."""
    root = Path(root or zoo_root()) / dataset
    found: dict[str, Path] = {}
    for config_path in sorted(root.glob("*/config.json")) if root.is_dir() else []:
        try:
            config = json.loads(read_regular_file(config_path, MAX_CONFIG_BYTES))
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict) or config.get("label") or config.get("dataset") != dataset:
            continue
        if (config.get("seed"), config.get("mask_seed"), config.get("width")) != (0, 0, 16):
            continue
        notation = config.get("notation")
        if isinstance(notation, str) and notation not in found:
            found[notation] = config_path.parent
    return found


def resolve_nets(masked: tuple[str, ...] | list[str], root: Path | None = None) -> list[Net]:
    """Normal ResNet-18 and the masked nets asked for, as shipped zoo folders; anything else is one line."""
    available = zoo_nets(root)
    offered = sorted(n for n in available if _MASKED.match(n) and "," not in n)
    if not masked:
        raise PaperStudyError("--masked needs at least one masked net, e.g. 0.9-Shallow")
    if len(set(masked)) != len(masked):
        raise PaperStudyError(f"--masked names a net twice: {', '.join(masked)}")
    for name in masked:
        if name == NORMAL:
            raise PaperStudyError(f"{NORMAL} is always attacked; --masked names the masked nets beside it")
        shown = name if len(name) <= 40 else name[:37] + "..."
        if name not in available or not _MASKED.match(name):
            what = "not a masked net" if name in available else "not a trained net of the zoo"
            raise PaperStudyError(f"--masked {shown!r}: {what} (the zoo's masked nets: {', '.join(offered) or 'none'})")
        if "," in name:  # `study plan --conditions` and `create --conditions` read comma-separated names
            raise PaperStudyError(f"--masked {shown!r}: a net whose name holds a comma cannot name a study condition")
    if NORMAL not in available:
        raise PaperStudyError(f"the zoo at {Path(root or zoo_root()) / DATASET} has no trained {NORMAL}")
    return [Net(n, available[n]) for n in (NORMAL, *masked)]


def conditions_for(nets: list[Net], eps: int) -> list[Condition]:
    """FGSM first, then PGD, against each net in turn: the first (FGSM against Normal ResNet-18, one step) is the
    cheapest, and it is the run that chooses the images."""
    return [Condition(f"{kind}{eps}", net) for net in nets for kind in ("FGSM", "PGD")]


# ------------------------------------------------------------------------------------------------ images
def candidates(labels: np.ndarray, counts: np.ndarray, threshold: float, seed: int) -> np.ndarray:
    """Test indices whose CIFAR-10H share for the true label is at least `threshold`, in an order drawn from
    `seed` (so the study samples them, rather than taking the start of the test set)."""
    pool = unambiguous_indices(labels, counts, min_share=threshold)
    return np.random.default_rng(seed).permutation(pool)


def human_accuracy(labels: np.ndarray, counts: np.ndarray, indices: list[int]) -> float:
    """CIFAR-10H annotators' accuracy on these images (over their answers), kept half an answer inside (0, 1)."""
    chosen = counts[np.asarray(indices)]
    right, total = float(chosen[np.arange(len(indices)), labels[np.asarray(indices)]].sum()), float(chosen.sum())
    return min(max(right / total, 0.5 / total), 1 - 0.5 / total)


# ------------------------------------------------------------------------------------------------ checks first
def study_config(options: PaperStudyOptions, n_conditions: int, labels_per_item: int) -> StudyConfig:
    per_participant = options.items_per_participant
    if per_participant is None:
        per_participant = DEFAULT_PER_CONDITION * n_conditions
    return StudyConfig(
        slug=options.name, title=options.title, labels_per_item=labels_per_item,
        items_per_participant=per_participant, items_per_condition=options.images,
        catch_per_participant=options.catch_per_participant, presentation_ms=options.presentation_ms,
        completion_code=options.completion_code, redirect_url=options.redirect_url, seed=options.seed)


def check_options(options: PaperStudyOptions, n_conditions: int) -> StudyConfig:
    """Every option checked before any work: the numbers, the study's own rules (create checks them again)."""
    eps = options.eps
    if isinstance(eps, bool) or not isinstance(eps, int) or not EPS_RANGE[0] <= eps <= EPS_RANGE[1]:
        raise PaperStudyError(f"--eps must be a whole number of grey levels from {EPS_RANGE[0]} to {EPS_RANGE[1]} "
                              f"(0-255 pixel units; the paper's attacks use 8, 16 and 32), got {eps}")
    if not 0 <= options.unambiguous <= 1:  # also refuses NaN
        raise PaperStudyError(f"--unambiguous is a share of CIFAR-10H annotators, from 0 to 1, got {options.unambiguous}")
    if options.images < 1:
        raise PaperStudyError(f"--images must be at least 1, got {options.images}")
    if not 0 < options.difference < 1:
        raise PaperStudyError(f"--difference is a drop in accuracy, a share above 0 and below 1, got {options.difference}")
    if not 0 <= options.catch_per_participant <= CATCH_IMAGES:
        raise PaperStudyError(f"--catch-per-participant must be from 0 to {CATCH_IMAGES} (the catch set's size), "
                              f"got {options.catch_per_participant}")
    config = study_config(options, n_conditions, options.labels_per_item)
    check_numbers(config)
    config.validate()
    if config.items_per_participant % n_conditions:
        raise PaperStudyError(f"--items-per-participant {config.items_per_participant} must be a multiple of the "
                              f"{n_conditions} conditions")
    if config.items_per_participant > options.images:  # the same images in every condition
        raise PaperStudyError(f"each participant sees {config.items_per_participant} study images, all of different "
                              f"test images (never one image in two conditions): --images must be at least that, "
                              f"got {options.images}")
    return config
