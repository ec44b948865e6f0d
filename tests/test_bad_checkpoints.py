"""Bad checkpoint folders for `python -m randmask evaluate --model DIR --n 10`: each refused in one line, with
the folder left exactly as it was; the app's model discovery skips each one with a warning."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state
from safetensors.torch import load_file, save_file

from randmask.cli.main import main
from randmask.core.errors import CheckpointError
from randmask.core.models import build_model
from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, save_checkpoint
from randmask.views.catalog import discover_models, load_entry


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid tiny checkpoint; every case edits a copy of it."""
    model = build_model("0.7-Shallow", width=4, mask_seed=1, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return save_checkpoint(model, tmp_path_factory.mktemp("good") / "m", extra={"clean_accuracy": 0.5})


def _config(folder: Path) -> dict:
    return json.loads((folder / CONFIG_FILE).read_text())


def _patch(**changes):
    def apply(folder: Path) -> None:
        config = _config(folder)
        for key, value in changes.items():
            if value is _DROP:
                del config[key]
            else:
                config[key] = value
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    return apply


def _raw(text: str | bytes):
    def apply(folder: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (folder / CONFIG_FILE).write_bytes(data)
    return apply


def _config_text(edit):
    """Edit config.json as text (for what json.dumps cannot write: NaN, duplicate keys)."""
    def apply(folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(edit((folder / CONFIG_FILE).read_text()))
    return apply


def _tensors(edit):
    def apply(folder: Path) -> None:
        tensors = load_file(str(folder / WEIGHTS_FILE))
        edit(tensors)
        save_file(tensors, str(folder / WEIGHTS_FILE))
    return apply


def _set(key, value):
    return _tensors(lambda t: t.__setitem__(key, value(t[key])))


def _replace(name: str, make):
    def apply(folder: Path) -> None:
        path = folder / name
        path.unlink()
        make(path)
    return apply


_DROP = object()
CONV = "body.conv1.weight"
CASES = [
    # wrong value types and ranges in config.json
    ("version-text", _patch(format_version="1"), 'format_version is "1", expected an integer from 1 to 1'),
    ("version-null", _patch(format_version=None), "format_version is null"),
    ("version-float", _patch(format_version=1.0), "format_version is 1.0"),
    ("version-bool", _patch(format_version=True), "format_version is true"),
    ("version-zero", _patch(format_version=0), "format_version is 0"),
    ("version-newer", _patch(format_version=2), "update randmask"),
    ("width-null", _patch(width=None), "width is null, expected an integer from 1 to 512"),
    ("width-list", _patch(width=[16]), "width is list"),
    ("width-text", _patch(width="4"), 'width is "4"'),
    ("width-float", _patch(width=4.0), "width is 4.0"),
    ("width-bool", _patch(width=True), "width is true"),
    ("width-zero", _patch(width=0), "width is 0"),
    ("width-negative", _patch(width=-4), "width is -4"),
    ("width-4096", _patch(width=4096), "width is 4096"),
    ("width-10^6", _patch(width=10**6), "width is 1000000"),
    ("mask-seed-null", _patch(mask_seed=None), "mask_seed is null"),
    ("mask-seed-text", _patch(mask_seed="1"), 'mask_seed is "1"'),
    ("mask-seed-negative", _patch(mask_seed=-1), "mask_seed is -1"),
    ("mask-seed-huge", _patch(mask_seed=2**40), "mask_seed is 1099511627776"),
    ("seed-float", _patch(seed=2.5), "seed is 2.5"),
    ("dataset-list", _patch(dataset=["cifar10"]), "dataset is list"),
    ("dataset-unknown", _patch(dataset="imagenet"), 'dataset is "imagenet", expected one of cifar10'),
    ("dataset-null", _patch(dataset=None), "dataset is null"),
    ("notation-number", _patch(notation=0.7), "notation is 0.7, expected text"),
    ("notation-unreadable", _patch(notation="0.7-Middle"), "cannot read"),
    ("notation-full-width", _patch(notation="０.７-Shallow"), "U+FF10"),
    ("notation-huge-multiplier", _patch(notation="0.7-Shallow×999999999"), "between 1 and 8"),
    ("notation-drops-all", _patch(notation="0.99999-Shallow"), "drops all 1024 positions"),
    ("notation-huge-ensemble", _patch(notation="0.7-ShallowEN999"), "between 1 and 10"),
    ("notation-normal-densenet", _patch(notation="Normal DenseNet-121", arch="densenet121"), "'Normal' names"),
    ("arch-inconsistent", _patch(arch="vgg19"), "arch 'vgg19' does not match notation '0.7-Shallow'"),
    ("arch-unknown", _patch(arch="resnet19"), 'arch is "resnet19"'),
    ("arch-number", _patch(arch=18), "arch is 18"),
    ("too-big-to-build", _patch(notation="0.5-B01234×8", width=512), "million parameters"),
    ("format-missing", _patch(format=_DROP), "not a randmask checkpoint config"),
    ("format-wrong", _patch(format="randmask"), "not a randmask checkpoint config"),
    ("width-missing", _patch(width=_DROP), "lacks width"),
    ("dtype-field-int8", _patch(weights_dtype="int8"), 'weights_dtype is "int8"'),
    ("accuracy-text", _patch(clean_accuracy="0.9"), 'clean_accuracy is "0.9"'),
    ("accuracy-above-one", _patch(clean_accuracy=1.5), "clean_accuracy is 1.5"),
    ("accuracy-bool", _patch(clean_accuracy=True), "clean_accuracy is true"),
    ("role-number", _patch(role=5), "role is 5"),
    # config.json that is not strict JSON, or not a file at all
    ("json-broken", _raw("{not json"), "not valid JSON"),
    ("json-nan", _config_text(lambda t: t.replace('"clean_accuracy": 0.5', '"clean_accuracy": NaN')),
     "NaN is not a JSON number"),
    ("json-infinity", _config_text(lambda t: t.replace('"width": 4', '"width": Infinity')), "Infinity"),
    ("json-duplicate-key", _config_text(lambda t: t.replace('"width": 4,', '"width": 4, "width": 8,')),
     "duplicate key 'width'"),
    ("json-deep-nesting", _raw("[" * 200_000 + "]" * 200_000), "nested too deeply"),
    ("json-5000-digit-int", _config_text(lambda t: t.replace('"width": 4', '"width": ' + "9" * 5000)),
     "integer with 5000 digits"),
    ("json-not-utf8", _raw(b'{"format": "\xff\xfe"}'), "not UTF-8"),
    ("json-list", _raw("[1, 2, 3]"), "not a randmask checkpoint config"),
    ("json-empty", _raw(""), "not valid JSON"),
    ("json-over-1mb", _config_text(lambda t: t[:-2] + ', "pad": "' + "x" * (1 << 20) + '"}'), "the limit is 1,048,576"),
    ("config-fifo", _replace(CONFIG_FILE, os.mkfifo), "config.json is not a regular file"),
    ("config-dev-zero", _replace(CONFIG_FILE, lambda p: p.symlink_to("/dev/zero")), "is not a regular file"),
    ("config-directory", _replace(CONFIG_FILE, lambda p: p.mkdir()), "is not a regular file"),
    ("config-missing", lambda f: (f / CONFIG_FILE).unlink(), "has no config.json"),
    # weights
    ("weights-int", _set(CONV, lambda v: (v * 100).to(torch.int64)), f"{CONV} is stored as I64, expected F32"),
    ("weights-int32", _set(CONV, lambda v: v.to(torch.int32)), "stored as I32"),
    ("weights-bool", _set(CONV, lambda v: v > 0), "stored as BOOL"),
    ("weights-uint8", _set(CONV, lambda v: v.to(torch.uint8)), "stored as U8"),
    ("weights-nan", _set(CONV, lambda v: v.index_fill(0, torch.tensor([0]), float("nan"))), "NaN or infinite"),
    ("weights-inf", _set("body.bn1.running_var", lambda v: v.fill_(float("inf"))), "body.bn1.running_var has 4 NaN"),
    ("weights-float64-overflow", _set(CONV, lambda v: v.double().fill_(1e300)), "NaN or infinite"),
    ("pixel-mean-nan", _set("pixel_mean", lambda v: v.fill_(float("nan"))), "pixel_mean has"),
    ("mask-as-uint8", _set("body.mask1.mask", lambda v: v.to(torch.uint8)), "expected BOOL"),
    ("mask-tampered", _set("body.mask1.mask", lambda v: ~v), "mask body.mask1 is not the one drawn"),
    ("counter-as-float", _set("body.bn1.num_batches_tracked", lambda v: v.float()), "expected I64"),
    ("weights-wrong-shape", _set(CONV, lambda v: torch.zeros(8, 3, 3, 3)), "has shape (8, 3, 3, 3)"),
    ("weights-missing-key", _tensors(lambda t: t.pop(CONV)), "missing ['body.conv1.weight']"),
    ("weights-extra-key", _tensors(lambda t: t.__setitem__("evil", torch.zeros(1))), "unexpected ['evil']"),
    ("weights-of-another-arch", lambda f: save_file(build_model("VGG-19", width=4).state_dict(), str(f / WEIGHTS_FILE)),
     "does not match"),
    ("weights-truncated", lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:5000]),
     "corrupt or truncated"),
    ("weights-empty", lambda f: (f / WEIGHTS_FILE).write_bytes(b""), "corrupt or truncated"),
    ("weights-pickle", lambda f: torch.save({"evil": 1}, f / WEIGHTS_FILE), "corrupt or truncated"),
    ("weights-huge-header", lambda f: (f / WEIGHTS_FILE).write_bytes((2**62).to_bytes(8, "little") + b"{}"),
     "corrupt or truncated"),
    ("weights-oversized", lambda f: (f / WEIGHTS_FILE).open("ab").truncate(50 << 20), "more than"),
    ("weights-fifo", _replace(WEIGHTS_FILE, os.mkfifo), "model.safetensors is not a regular file"),
    ("weights-directory", _replace(WEIGHTS_FILE, lambda p: p.mkdir()), "is not a regular file"),
    ("weights-missing", lambda f: (f / WEIGHTS_FILE).unlink(), "has no model.safetensors"),
]


def _bad_folder(good: Path, root: Path, make) -> Path:
    folder = root / "m"
    shutil.copytree(good, folder)
    make(folder)
    return folder


@pytest.mark.parametrize("name, make, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint_is_refused_in_one_line(good, tmp_path, capsys, name, make, fragment):
    folder = _bad_folder(good, tmp_path, make)
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["evaluate", "--model", str(folder), "--n", "10"], capsys)
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("model, fragment", [
    ("0.7-Shallow", "to use an UNTRAINED 0.7-Shallow built from the notation, pass --untrained"),
    ("Normal ResNet-18", "pass --untrained"),
    ("0.5-Shallowz", "not a checkpoint folder, nor a model notation: cannot read"),
    ("x" * 100_000, "not a checkpoint folder, nor a model notation"),
    ("0.7-Shallow\x00", "U+0000"),
], ids=["notation", "normal", "typo", "100k-characters", "nul-byte"])
def test_a_bare_notation_is_not_silently_an_untrained_model(tmp_path, monkeypatch, capsys, model, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(main, ["evaluate", "--model", model, "--n", "10"], capsys)
    assert_one_line_error(code, err, fragment)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_the_untrained_flag_says_so_and_prints_valid_json(capsys, data_dir):
    code, out, err = run_main(main, ["evaluate", "--model", "0.7-Shallow", "--untrained", "--n", "10"], capsys)
    assert code == 0 and "UNTRAINED" in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["trained"] is False and result["n"] == 10


def test_overflowing_logits_are_an_error_not_nan_in_the_json(good, tmp_path, capsys, data_dir):
    folder = _bad_folder(good, tmp_path, _set("body.linear.weight", lambda v: v.fill_(3e38)))
    load_model(folder)  # finite weights: the checkpoint itself is valid
    code, out, err = run_main(main, ["evaluate", "--model", str(folder), "--n", "10"], capsys)
    assert_one_line_error(code, err, "NaN or infinite logits on 10 of 10 images")
    assert "NaN" not in out and out == ""


def test_a_good_checkpoint_still_evaluates(good, capsys, data_dir):
    code, out, err = run_main(main, ["evaluate", "--model", str(good), "--n", "10"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["trained"] is True


def test_discovery_skips_each_bad_config_with_a_warning_and_bad_weights_fail_on_load(good, tmp_path):
    runs, zoo = tmp_path / "runs", tmp_path / "zoo"
    zoo.mkdir()
    shutil.copytree(good, runs / "fine")
    config_cases = [name for name, _, _ in CASES if not name.startswith(("weights-", "mask-as-", "mask-tampered", "counter-", "pixel-"))]
    for name, make, _ in CASES:
        shutil.copytree(good, runs / name)
        make(runs / name)
    catalog = discover_models(zoo=zoo, runs=runs, include_untrained=False)
    skipped = {line.split(":")[0].removeprefix("your model ") for line in catalog.problems}
    assert skipped == set(config_cases)
    assert all("\n" not in line for line in catalog.problems)
    # discovery reads configs only; a listed folder with bad weights fails in one line when it is loaded
    listed = {e.key.removeprefix("user:"): e for e in catalog.entries}
    assert listed.keys() == {"fine"} | {name for name, _, _ in CASES if name not in config_cases} - {"weights-missing"}
    load_entry(listed.pop("fine"))
    for name, entry in listed.items():
        with pytest.raises(CheckpointError) as info:
            load_entry(entry)
        assert "\n" not in str(info.value), name
