"""Shared fixtures for the app tests: a tiny zoo, a results folder and the environment that points the app at them.

The zoo's models are untrained ResNet-18s at the shipped zoo's width (a reference names any other width, so the
app names them as it names the real zoo's), so nothing needs training:
- Normal ResNet-18: random weights (an honest, input-dependent model that attacks can move),
- 0.9-Shallow and 0.7-Shallow: the same random bodies, but with the last layer replaced by a constant
  "always CONFIDENT_CLASS with probability 0.9998" answer, which makes the pages' numbers predictable.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from randmask.core.models import build_model
from randmask.core.notation import DEFAULT_WIDTH
from randmask.experiments.checkpoint import save_checkpoint
from randmask.experiments.data import load_test_sample

CONFIDENT_CLASS = 3  # cat: test image 0 is a cat
TINY_WIDTH = DEFAULT_WIDTH  # 16: the app would call a width-4 model '0.9-Shallow@w4'


def constant_model(notation: str) -> torch.nn.Module:
    """A model that ignores its input and says CONFIDENT_CLASS with probability e^10 / (e^10 + 9)."""
    model = build_model(notation, width=TINY_WIDTH)
    with torch.no_grad():
        model.body.linear.weight.zero_()
        model.body.linear.bias.zero_()
        model.body.linear.bias[CONFIDENT_CLASS] = 10.0
    return model


def planned_recipe(notation: str, **changes) -> dict:
    """The zoo plan's training recipe for a CIFAR-10 model, as a checkpoint records it."""
    from dataclasses import replace

    from randmask.experiments.train_config import asdict_json
    from randmask.results.zoo import ZOO, planned_config

    entry = next(e for e in ZOO if e.notation == notation and e.dataset == "cifar10" and e.seed == e.mask_seed == 0)
    return asdict_json(replace(planned_config(entry), **changes))


def make_zoo(root: Path) -> Path:
    """Normal and 0.9-Shallow carry the plan's recipe; 0.7-Shallow an older one (15 epochs), due for retraining."""
    normal = build_model("Normal ResNet-18", width=TINY_WIDTH)
    save_checkpoint(normal, root / "cifar10" / "Normal_ResNet-18",
                    extra={"clean_accuracy": 0.1, "role": "baseline", "recipe": planned_recipe("Normal ResNet-18")})
    for notation, changes in (("0.9-Shallow", {}), ("0.7-Shallow", {"epochs": 15})):
        save_checkpoint(constant_model(notation), root / "cifar10" / notation,
                        extra={"clean_accuracy": 0.1, "recipe": planned_recipe(notation, **changes)})
    return root


def make_results(root: Path) -> Path:
    """A reproduction CSV with Table 7's DenseNet-121 -> {Normal, 0.7-Shallow} FGSM16 rows and clean accuracies."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"protocol": "transfer", "dataset": "cifar10", "source": "DenseNet-121", "target": "Normal ResNet-18",
         "attack": "FGSM16", "metric": "defense_rate", "n": 200, "correct": 40, "accuracy": 0.2, "ci_low": 0.15,
         "ci_high": 0.26, "paper_attack": "FGSM16"},
        {"protocol": "transfer", "dataset": "cifar10", "source": "DenseNet-121", "target": "0.7-Shallow",
         "attack": "FGSM16", "metric": "defense_rate", "n": 200, "correct": 110, "accuracy": 0.55, "ci_low": 0.48,
         "ci_high": 0.62, "paper_attack": "FGSM16"},
        {"protocol": "transfer", "dataset": "cifar10", "source": "", "target": "Normal ResNet-18", "attack": "",
         "metric": "clean_accuracy", "n": 1000, "correct": 900, "accuracy": 0.9, "ci_low": 0.88, "ci_high": 0.92},
        {"protocol": "transfer", "dataset": "cifar10", "source": "", "target": "0.7-Shallow", "attack": "",
         "metric": "clean_accuracy", "n": 1000, "correct": 850, "accuracy": 0.85, "ci_low": 0.83, "ci_high": 0.87},
    ]
    path = root / "table7.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture()
def app_env(tiny_zoo, tmp_path, monkeypatch) -> dict[str, str]:
    """Point the app at the tiny zoo, an empty jobs folder and a results folder with one CSV."""
    env = {"RANDMASK_ZOO": str(tiny_zoo), "RANDMASK_RUNS": str(tmp_path / "runs"),
           "RANDMASK_RESULTS": str(tmp_path / "results")}
    make_results(tmp_path / "results")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def sample_labels(n: int) -> torch.Tensor:
    return load_test_sample("cifar10", n)[1]
