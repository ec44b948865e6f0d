"""The data sets the lab knows: image shape, class names and display name of each (standard library only).

One registry for the concept: models size their layers from it, the loaders check names against it, the app
shows its display names.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    key: str
    name: str  # what the app and reports call it
    shape: tuple[int, int, int]  # C×H×W
    classes: tuple[str, ...]


_DATASETS = [
    Dataset("cifar10", "CIFAR-10", (3, 32, 32), ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck")),
    Dataset("mnist", "MNIST", (1, 28, 28), tuple(str(i) for i in range(10))),
    Dataset("tinyimagenet10", "Tiny ImageNet (10 classes)", (3, 64, 64),
            ("goldfish", "black stork", "walking stick", "academic gown", "bucket", "dumbbell", "miniskirt",
             "refrigerator", "teapot", "ice lolly")),
]
REGISTRY: dict[str, Dataset] = {d.key: d for d in _DATASETS}
DATASETS: dict[str, tuple[int, int, int]] = {d.key: d.shape for d in _DATASETS}  # key -> C×H×W
CLASSES: dict[str, list[str]] = {d.key: list(d.classes) for d in _DATASETS}
NUM_CLASSES = 10


def dataset_name(dataset: str) -> str:
    """'CIFAR-10' for 'cifar10'; an unknown key as it is."""
    entry = REGISTRY.get(dataset)
    return entry.name if entry else dataset
