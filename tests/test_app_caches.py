"""The app reads the model catalog and the zoo table once while their files stay the same (each read cost
0.5-1 s of CPU time, up to four times a page run: issue 33, fast first steps), and again as soon as a model is
added, retrained or removed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pages import _ui
from randmask.views.catalog import Catalog


@pytest.fixture()
def folders(tmp_path, monkeypatch) -> tuple[Path, Path]:
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    (zoo / "cifar10" / "0.7-Shallow").mkdir(parents=True)
    (zoo / "cifar10" / "0.7-Shallow" / "config.json").write_text("{}")
    runs.mkdir()
    monkeypatch.setenv("RANDMASK_ZOO", str(zoo))
    monkeypatch.setenv("RANDMASK_RUNS", str(runs))
    _ui._catalog.clear()
    _ui._zoo_rows.clear()
    return zoo, runs


def test_the_catalog_is_read_once_until_a_model_changes(folders, monkeypatch):
    zoo, runs = folders
    reads = []
    monkeypatch.setattr(_ui, "discover_models", lambda: reads.append(1) or Catalog([]))
    for _ in range(3):
        _ui.catalog()
    assert len(reads) == 1  # the old catalog() read the disk on every call
    config = zoo / "cifar10" / "0.7-Shallow" / "config.json"
    os.utime(config, ns=(config.stat().st_mtime_ns + 10**9,) * 2)  # retrained in place
    _ui.catalog()
    assert len(reads) == 2
    (runs / "mine").mkdir()
    (runs / "mine" / "model.safetensors").write_bytes(b"x")  # a finished run of the Train page
    _ui.catalog()
    assert len(reads) == 3
    (runs / "mine" / "progress.jsonl").write_text("{}\n")  # a log line is no new model
    _ui.catalog()
    assert len(reads) == 3
    shutil.rmtree(zoo / "cifar10" / "0.7-Shallow")  # removed
    _ui.catalog()
    assert len(reads) == 4


def test_the_zoo_table_is_read_once_until_the_zoo_changes(folders, monkeypatch):
    zoo, _ = folders
    reads = []
    monkeypatch.setattr(_ui, "list_zoo", lambda root: reads.append(root) or [])
    _ui.zoo_rows()
    _ui.zoo_rows()
    assert reads == [zoo]
    (zoo / "cifar10" / "0.9-Shallow").mkdir()
    (zoo / "cifar10" / "0.9-Shallow" / "config.json").write_text("{}")  # exported
    _ui.zoo_rows()
    assert reads == [zoo, zoo]
