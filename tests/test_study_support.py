"""Shared builders for the study tests (imported by the test_study_* modules; holds no tests itself).

Sets are made from real CIFAR-10 test images (loaded once per process) with simple perturbations.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from study import StudyConfig, create_study, open_db
from study.sets import build_clean_set, build_noise_set, load_cifar10_test


@pytest.fixture(scope="session")
def cifar(data_dir):
    return load_cifar10_test(str(data_dir))


@pytest.fixture(scope="session")
def study_sets(cifar, tmp_path_factory) -> dict[str, Path]:
    """Three 24-image conditions on the same test images (clean, noise stand-ins for two attacked models,
    with known 'source model' predictions), plus catch and practice sets on other images."""
    x, y = cifar
    root = tmp_path_factory.mktemp("sets")
    images = np.arange(100, 124)
    fooled = (y[images] + 1) % 10  # the stand-in source model always predicts the next class
    build_clean_set(root / "clean", images, x=x, y=y)
    build_noise_set(root / "pgd-normal", images, x=x, y=y, eps=8, seed=1, source="Normal ResNet-18",
                    attack="PGD16", source_preds=fooled)
    build_noise_set(root / "pgd-shallow", images, x=x, y=y, eps=8, seed=2, source="0.9-Shallow",
                    attack="PGD16", source_preds=y[images])  # this one is not fooled
    build_clean_set(root / "catch", np.arange(200, 212), x=x, y=y)
    build_clean_set(root / "practice", np.arange(300, 303), x=x, y=y)
    return {"root": root, "conditions": [root / "clean", root / "pgd-normal", root / "pgd-shallow"],
            "catch": root / "catch", "practice": root / "practice"}


def make_study(db_path: Path, sets: dict, *, slug: str = "s1", practice: bool = True, **overrides) -> None:
    settings = {"labels_per_item": 2, "items_per_participant": 6, "items_per_condition": 12,
                "catch_per_participant": 2, **overrides}
    db = open_db(db_path)
    try:
        create_study(db, StudyConfig(slug=slug, **settings), sets["conditions"], sets["catch"],
                     sets["practice"] if practice else None)
    finally:
        db.close()
