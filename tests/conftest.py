"""Shared test settings: one torch thread (training may run beside the tests), data from RANDMASK_DATA."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RANDMASK_DATA", str(ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["RANDMASK_DATA"])
    if not (path / "cifar10" / "test.npz").exists():
        pytest.skip(f"no data under {path} (set RANDMASK_DATA)")
    return path


@pytest.fixture(autouse=True)
def _crafted_cache_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """Tests never fill the project's runs/crafted cache."""
    monkeypatch.setenv("RANDMASK_CRAFTED", str(tmp_path_factory.getbasetemp() / "crafted"))


@pytest.fixture(autouse=True)
def _precision_probes_per_test(tmp_path_factory, monkeypatch, request) -> None:
    """Each test measures its own precision probes: none reads another's (or the user's) stored answer."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.nodeid)[-120:]
    monkeypatch.setenv("RANDMASK_PRECISION_CACHE", str(tmp_path_factory.getbasetemp() / "precision" / f"{name}.json"))
