"""One adversarial-set format: the attack writer (randmask) and the study's reader agree on it, the study
imports nothing from randmask but the standard-library-only schema modules, and a set written by
`python -m randmask attack` becomes exactly those items in `python -m study create`'s database."""
from __future__ import annotations

import ast
import csv
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_attack_support import TinyCNN

from randmask.core import set_schema
from randmask.experiments.adversarial_sets import save_adversarial_set
from study.sets import build_noise_set, read_set

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_MODULES = ("randmask.core.set_schema", "randmask.core.safe_files",  # standard library only
                  "randmask.core.settings", "randmask.core.errors", "randmask.core.datasets")
ARRAY_MODULES = ("randmask.core.data_arrays",)  # the one data-file check, shared with the models' loaders: numpy too


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if (ROOT / node.module.replace(".", "/")).is_dir():  # `from randmask.core import x`: count its x
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
    return names


def read_meta(folder: Path) -> list[dict]:
    with open(folder / set_schema.META_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- imports ------------------------------------------------------------------------------------------


def test_the_study_runs_without_torch():
    # a fresh interpreter: what this test process has imported already does not count
    run_python("-c", "import sys, study, study.sets, study.cli, study.export; "
                     "assert 'torch' not in sys.modules, 'torch was imported'")


def test_randmask_public_names_load_on_first_use():
    run_python("-c", "import sys, randmask, randmask.core.set_schema\n"
                     "assert 'torch' not in sys.modules\n"
                     "from randmask import build_model, parse_model, __version__\n"
                     "assert 'torch' in sys.modules and callable(build_model) and __version__\n"
                     "assert parse_model('0.5-Shallow') == randmask.parse_model('0.5-Shallow')\n"
                     "assert all(hasattr(randmask, name) for name in randmask.__all__)\n"
                     "assert set(randmask.__all__) <= set(dir(randmask))\n"
                     "assert set(randmask.__all__) == {*randmask._LAZY, '__version__'}\n"
                     "from randmask import load_model, make_attack, train, TrainConfig, make_config\n"
                     "assert train.__module__ == 'randmask.experiments.train' and callable(make_attack)\n"
                     "from randmask import views  # a subpackage still imports by name\n"
                     "try:\n    randmask.no_such_name\nexcept AttributeError:\n    pass\n"
                     "else:\n    raise SystemExit('no AttributeError')")


def test_the_study_imports_only_the_schema_from_randmask():
    files = sorted((ROOT / "study").rglob("*.py"))
    assert len(files) > 10
    used = {name for path in files for name in imported_modules(path) if name.split(".")[0] == "randmask"}
    assert used <= set(SCHEMA_MODULES) | set(ARRAY_MODULES) and set(ARRAY_MODULES) <= used


@pytest.mark.parametrize("module", SCHEMA_MODULES + ARRAY_MODULES)
def test_schema_modules_use_only_the_standard_library(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    top_level = {name.split(".")[0] for name in imported_modules(path)}
    allowed = {"numpy"} if module in ARRAY_MODULES else set()  # never torch: the study does not import it
    ours = {name for name in imported_modules(path) if name.split(".")[0] == "randmask"}
    assert ours <= set(SCHEMA_MODULES), ours  # and what it takes from randmask is standard library only too
    assert top_level - {"randmask"} <= set(sys.stdlib_module_names) | {"__future__"} | allowed, top_level


# --- the schema itself ---------------------------------------------------------------------------------


def test_schema_names():
    assert set_schema.image_file(42) == "images/000042.png"
    assert set_schema.clean_image_file(7) == "images/clean/000007.png"
    assert set_schema.pred_column("0.9-Shallow") == "pred:0.9-Shallow"
    assert set_schema.is_known_column("pred:Normal ResNet-18") and set_schema.is_known_column("fooled")
    assert not set_schema.is_known_column("pred:") and not set_schema.is_known_column("predicted")
    assert not set(set_schema.REQUIRED_COLUMNS) & set(set_schema.OPTIONAL_COLUMNS)


def test_every_column_a_writer_writes_is_known_to_the_reader(tmp_path):
    torch.manual_seed(0)
    source, other = TinyCNN(width=4).eval(), TinyCNN(width=4).eval()
    x = torch.randint(0, 256, (5, 3, 32, 32)).float() / 255
    y = torch.tensor([1, 2, 3, 4, 5])
    indices = torch.tensor([9, 40, 41, 700, 9999])
    rows = save_adversarial_set(source, "FGSM8", x, y, indices, tmp_path / "attack", source_name="tiny",
                                predict_models={"Other Net": other}, save_clean=True)
    header = list(read_meta(tmp_path / "attack")[0])
    assert set(set_schema.META_COLUMNS) | {"clean_file", "pred:Other Net"} == set(header)
    assert [c for c in header if not set_schema.is_known_column(c)] == []
    assert set(set_schema.REQUIRED_COLUMNS) <= set(header)
    # and the reader takes them: one item per row, the other model's predictions under its name
    items = read_set(tmp_path / "attack")
    assert [i.test_index for i in items] == indices.tolist()
    assert [i.predictions["Other Net"] for i in items] == [r["pred:Other Net"] for r in rows]
    assert all(i.file == set_schema.image_file(i.test_index) for i in items)
    # the study's own writer (clean and noise stand-ins) follows the same schema
    pixels = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    images = dict(zip(indices.tolist(), pixels, strict=True))  # indexable by test index, as the builder needs
    labels = dict(zip(indices.tolist(), y.tolist(), strict=True))
    build_noise_set(tmp_path / "noise", indices.tolist(), x=images, y=labels, source="tiny", source_preds=[1] * 5)
    noise_header = list(read_meta(tmp_path / "noise")[0])
    assert all(set_schema.is_known_column(c) for c in noise_header) and len(noise_header) >= 8


# --- round trip through both command lines ---------------------------------------------------------------


def test_a_set_from_randmask_attack_becomes_exactly_those_study_items(tmp_path, data_dir):
    folder, db_path = tmp_path / "set", tmp_path / "study.db"
    run_python("-m", "randmask", "attack", "--model", "0.7-Shallow", "--untrained", "--attack", "FGSM8",
               "--n", "6", "--all-images", "--pool", "6", "--predict", "0.9-Shallow@seed=1", "--save-clean",
               "--out", str(folder), "--device", "cpu", "--quiet")
    run_python("-m", "study", "create", "--db", str(db_path), "--name", "roundtrip", "--set", str(folder),
               "--items-per-participant", "6", "--catch-per-participant", "0", "--labels-per-item", "1")
    meta = read_meta(folder)
    assert len(meta) == 6 and {r["pred:0.9-Shallow"] for r in meta} <= {str(c) for c in range(10)}

    with sqlite3.connect(db_path) as db:
        items = db.execute("SELECT id, role, condition, attack, source_model, test_index, true_label, source_pred, "
                           "linf, l2, png, png_sha256, set_file FROM items ORDER BY test_index").fetchall()
        predictions = {(item_id, model): pred for item_id, model, pred in
                       db.execute("SELECT item_id, model, pred FROM item_predictions")}
    assert len(items) == len(meta)
    with np.load(data_dir / "cifar10" / "test.npz") as cifar:
        x_test, y_test = cifar["x"], cifar["y"]
    for row, item in zip(meta, items, strict=True):
        item_id, role, condition, attack, source, index, label, source_pred, linf, l2, png, digest, file = item
        assert (role, condition) == ("trial", "FGSM8-vs-0.7-Shallow")
        assert (attack, source, file) == (row["attack"], row["source"], row["file"]) == (
            "FGSM8", "0.7-Shallow", set_schema.image_file(index))
        assert (index, label, source_pred) == (int(row["index"]), int(row["true_label"]), int(row["source_pred"]))
        assert label == int(y_test[index])  # the test set's own label
        assert (linf, l2) == (pytest.approx(float(row["linf"])), pytest.approx(float(row["l2"])))
        assert predictions[(item_id, "0.9-Shallow")] == int(row["pred:0.9-Shallow"])
        image_bytes = (folder / row["file"]).read_bytes()
        assert png == image_bytes and digest == hashlib.sha256(image_bytes).hexdigest()  # the same image, byte for byte
        with Image.open(folder / row["clean_file"]) as clean, Image.open(folder / row["file"]) as shown:
            original, attacked = np.asarray(clean, np.int16), np.asarray(shown, np.int16)
        assert np.array_equal(original, x_test[index])  # the writer's originals are the test images
        assert np.abs(attacked - original).max() == linf == 8  # FGSM8: every saved image is 8 grey levels off
