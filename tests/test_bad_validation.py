"""One validation per kind of thing, called by every command that takes it: a checkpoint, an attack setting,
a notation, a study database, a data file. Each bad input is refused in one line (exit 2), with every file of
the working folder unchanged, whichever command is given it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinput import assert_one_line_error, assert_one_line_exception, assert_unchanged, run_main, tree_state
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from randmask.attacks.notation import AttackNotationError, parse_attack
from randmask.cli.main import main as randmask_main
from randmask.core.errors import RandmaskError
from randmask.core.masks import RandomMask
from randmask.core.models import build_model, check_buildable
from randmask.core.notation import format_number, parse_model
from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint

SMALL = ["--width", "4", "--pool", "12", "--batch-size", "12", "--quiet"]


def _refused(capsys, main, argv, root: Path, fragment: str = "") -> str:
    before = tree_state(root)
    code, out, err = run_main(main, argv, capsys)
    line = assert_one_line_error(code, err, fragment)
    assert_unchanged(before, tree_state(root))
    return line


# ----------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """M0, M1: good tiny checkpoints; NEG: M1 with a BatchNorm running_var of -1 (finite, so only the
    variance check can catch it)."""
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        save_checkpoint(build_model("Normal ResNet-18", width=4, seed=seed), root / f"M{seed}")
    save_checkpoint(build_model("Normal ResNet-18", width=4, seed=1), root / "NEG")
    tensors = load_file(str(root / "NEG" / WEIGHTS_FILE))
    tensors["body.bn1.running_var"][0] = -1.0
    save_file(tensors, str(root / "NEG" / WEIGHTS_FILE))
    return root


LOADERS = [
    ["evaluate", "--model", "{d}/NEG", "--n", "4"],
    ["noise", "--models", "{d}/NEG", "--sigmas", "8", "--out", "{o}/x.csv", *SMALL],
    ["whitebox", "--models", "{d}/NEG", "--attack", "FGSM1", "--out", "{o}/x.csv", *SMALL],
    ["transfer", "--source", "{d}/M0", "--targets", "{d}/NEG", "--attack", "FGSM8", "--n", "3", "--out",
     "{o}/x.csv", *SMALL],
    ["transfer", "--source", "{d}/NEG", "--targets", "{d}/M0", "--attack", "FGSM8", "--n", "3", "--out",
     "{o}/x.csv", *SMALL],
    ["graybox", "--sources", "{d}/M0", "--targets", "{d}/NEG", "--n", "3", "--out", "{o}/x.csv", *SMALL],
    ["madry", "--source", "{d}/NEG", "--targets", "{d}/M0", "--n", "3", "--out", "{o}/x.csv", *SMALL],
    ["shuffle", "--models", "{d}/NEG", "--n", "3", "--out", "{o}/x.csv", *SMALL],
    ["attack", "--model", "{d}/NEG", "--attack", "FGSM8", "--n", "2", "--out", "{o}/set", *SMALL],
    ["attack", "--model", "{d}/M0", "--predict", "{d}/NEG", "--attack", "FGSM8", "--n", "2", "--out", "{o}/set",
     *SMALL],
    ["ensemble", "{d}/M0", "{d}/NEG", "--out", "{o}/EN", "--eval-n", "4"],
]


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("argv", LOADERS, ids=lambda a: " ".join(a[:3]).replace("{d}/", ""))
def test_a_negative_batchnorm_variance_is_refused_by_every_command_that_loads_a_model(models, tmp_path, capsys,
                                                                                      argv):
    argv = [a.format(d=models, o=tmp_path) for a in argv]
    line = _refused(capsys, randmask_main, argv, models, "body.bn1.running_var has 1 negative value")
    assert "NEG" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- attack settings
TINY = ["PGD16(step=1e-308)", "PGD16(step=5e-324, steps=5)", "PGD0.000001,16", "CW40(c=1e-320)",
        "CW40(lr=1e-308)", "APGD8(rho=1e-308)", "Square8(p_init=1e-308)"]


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("attack", TINY[:2])
@pytest.mark.parametrize("argv", [
    ["attack", "--model", "{d}/M0", "--attack", "{a}", "--n", "2", "--out", "{o}/set", *SMALL],
    ["whitebox", "--models", "{d}/M0", "--attack", "{a}", "--out", "{o}/x.csv", *SMALL],
    ["graybox", "--sources", "{d}/M0", "--targets", "{d}/M1", "--attack", "{a}", "--n", "3", "--out", "{o}/x.csv",
     *SMALL],
    ["transfer", "--source", "{d}/M0", "--targets", "{d}/M1", "--attack", "{a}", "--n", "3", "--out", "{o}/x.csv",
     *SMALL],
], ids=lambda a: a[0])
def test_an_attack_setting_that_breaks_arithmetic_is_refused_by_every_attack_command(models, tmp_path, capsys,
                                                                                    argv, attack):
    argv = [a.format(d=models, o=tmp_path, a=attack) for a in argv]
    _refused(capsys, randmask_main, argv, models, "must be at least 0.000000001")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", TINY[2:])
def test_tiny_attack_settings_are_refused_by_the_parser(text):
    with pytest.raises(AttackNotationError) as info:
        parse_attack(text)
    assert_one_line_exception(info.value, (AttackNotationError,))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["PGD16(step={})", "PGD16(step={}, steps=3)", "CW40(c={})", "CW40(lr={})", "APGD8(rho={})",
                        "Square8(p_init={})", "CW40(kappa={})", "FGSM{}"]),
       st.floats(min_value=0, max_value=1e308, allow_nan=False, allow_infinity=False, allow_subnormal=True))
def test_any_real_setting_parses_to_a_printable_spec_or_is_refused(template, value):
    text = template.format(repr(value))  # 1e-308 style: FGSM's short form cannot hold an exponent, so refused
    try:
        spec = parse_attack(text)
    except AttackNotationError as exc:
        assert_one_line_exception(exc, (AttackNotationError,))
        return
    assert parse_attack(str(spec)) == spec  # printed within the length limit, reads back the same
    if spec.kind == "PGD":
        assert 1 <= spec["steps"] <= 100_000


# ------------------------------------------------------------------------------------------------- notation
NO_DROP = [
    (["info", "0.0001-Shallow"], "drops no position of the 1024 of each channel of masked layer body.mask1"),
    (["info", "0.001-Shallow"], "masked layer body.layer2.0.mask1 (block 2, 32×16×16)"),
    (["info", "0.0005-Shallow", "--dataset", "mnist"], "drops no position of the 784"),
    (["info", "0.1-DeepDC", "--width", "1"], "drops no channel of masked layer body.layer3.0.mask1"),
    (["info", "0.0001-ShallowDropout"], "drops no position"),
    (["info", "0.0001-ShallowSM"], "drops no position"),
    (["evaluate", "--model", "0.0001-Shallow", "--untrained", "--n", "4"], "drops no position"),
    (["noise", "--models", "0.0001-Shallow", "--untrained", "--out", "{o}/x.csv", *SMALL], "drops no position"),
    (["train", "0.0001-Shallow", "--width", "4", "--out", "{o}/run"], "drops no position"),
]


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("argv, fragment", NO_DROP, ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else None)
def test_a_ratio_that_drops_nothing_in_a_masked_layer_is_refused_with_the_layer_named(tmp_path, capsys, argv,
                                                                                      fragment):
    line = _refused(capsys, randmask_main, [a.format(o=tmp_path) for a in argv], tmp_path, fragment)
    assert "use a ratio of at least" in line
    assert list(tmp_path.iterdir()) == []


def test_the_least_ratio_offered_drops_one_in_every_masked_layer(tmp_path, capsys):
    code, _, err = run_main(randmask_main, ["info", "0.0001-Shallow"], capsys)
    least = err.rsplit("at least ", 1)[1].strip()
    model = build_model(f"{least}-Shallow", width=4)
    masks = [m.mask for m in model.modules() if isinstance(m, RandomMask)]
    assert masks and all(int((~mask).flatten(1).sum(1).min()) >= 1 for mask in masks)


def test_a_checkpoint_whose_notation_drops_nothing_is_refused(models, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(models / "M0", folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "notation": "0.0001-Shallow"}))
    _refused(capsys, randmask_main, ["evaluate", "--model", str(folder), "--n", "4"], tmp_path, "drops no position")


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=1e-6, max_value=0.999, allow_nan=False), st.sampled_from(["Shallow", "ShallowDC", "Deep"]),
       st.sampled_from([1, 4]))
def test_every_buildable_masked_layer_drops_and_keeps_something(ratio, kind, width):
    spec = parse_model(f"{format_number(ratio)}-{kind}")
    try:
        check_buildable(spec, "cifar10", width)
    except RandmaskError as exc:
        assert_one_line_exception(exc, (RandmaskError,), "drops")
        return
    model = build_model(spec, width=width)
    for m in model.modules():
        if isinstance(m, RandomMask):
            dropped = (~m.mask).flatten(1).sum(1) if "DC" not in kind else (~m.mask).flatten(1).all(1).sum()
            assert int(dropped.min()) >= 1 and bool(m.mask.any())


# ------------------------------------------------------------------------------------------------- ensemble
def _member_with(models: Path, tmp_path: Path, name: str = "M1", **changes) -> Path:
    folder = tmp_path / "in" / name
    shutil.copytree(models / name, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("value, fragment", [
    ("abc", 'train_time_s is "abc", expected a number of seconds'), (1e308, "train_time_s is 1e+308"),
    (-1, "train_time_s is -1"), (True, "train_time_s is true"), ([1], "train_time_s is list"),
])
def test_ensemble_refuses_a_member_whose_training_time_is_not_a_number(models, tmp_path, capsys, value, fragment):
    member = _member_with(models, tmp_path, train_time_s=value)
    _refused(capsys, randmask_main, ["ensemble", str(models / "M0"), str(member), "--out", str(tmp_path / "EN")],
             tmp_path, fragment)
    assert not (tmp_path / "EN").exists()


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("n", ["0", "-3"])
def test_ensemble_eval_n_below_one_is_refused_not_every_image(models, tmp_path, capsys, n):
    _refused(capsys, randmask_main, ["ensemble", str(models / "M0"), str(models / "M1"), "--out",
                                     str(tmp_path / "EN"), "--eval-n", n], tmp_path, "--eval-n must be at least 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("data_dir")
def test_ensemble_of_the_longest_trainings_writes_strict_json(models, tmp_path, capsys):
    members = [_member_with(models, tmp_path, name, train_time_s=1e9) for name in ("M0", "M1")]
    code, _, err = run_main(randmask_main, ["ensemble", *map(str, members), "--out", str(tmp_path / "EN"),
                                            "--eval-n", "2"], capsys)
    assert code == 0, err
    text = (tmp_path / "EN" / CONFIG_FILE).read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["train_time_s"] == 2e9


def test_a_checkpoint_is_never_written_with_an_infinite_number(tmp_path):
    with pytest.raises(RandmaskError, match=r"NaN or infinite number: \['train_time_s'\]"):
        save_checkpoint(build_model("Normal ResNet-18", width=4), tmp_path / "m",
                        extra={"train_time_s": float("inf")})
    assert not any((tmp_path / "m").glob("*"))


# ---------------------------------------------------------------------------------------------- data files
DATA_CASES = [
    ("label-255", lambda x, y: (x, np.where(np.arange(len(y)) == 3, 255, y).astype(np.uint8)),
     "label 255 of image 3 is outside 0-9"),
    ("label-negative", lambda x, y: (x, y.astype(np.int64) - 1), "is outside 0-9"),
    ("float-images", lambda x, y: (x.astype(np.float32) / 255, y), "images are float32, expected uint8"),
    ("float-labels", lambda x, y: (x, y.astype(np.float64)), "labels are float64"),
    ("more-labels", lambda x, y: (x, np.concatenate([y, y])), "8 images but 16 labels"),
    ("fewer-labels", lambda x, y: (x, y[:5]), "8 images but 5 labels"),
    ("no-images", lambda x, y: (x[:0], y[:0]), "holds no images"),
    ("mnist-sized", lambda x, y: (x[:, :28, :28, 0], y), "images have shape (8, 28, 28), expected N×32×32×3"),
    ("labels-2d", lambda x, y: (x, y[:, None]), "expected one integer per image"),
]


@pytest.fixture(scope="module")
def cifar8(data_dir):
    with np.load(data_dir / "cifar10" / "test.npz") as archive:
        return archive["x"][:8], archive["y"][:8]


@pytest.mark.parametrize("name, edit, fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_a_bad_data_file_is_refused_in_one_line_naming_it(models, cifar8, tmp_path, monkeypatch, capsys, name, edit,
                                                           fragment):
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    x, y = edit(*cifar8)
    np.savez(root / "cifar10" / "test.npz", x=x, y=y)
    monkeypatch.setenv("RANDMASK_DATA", str(root))
    monkeypatch.setenv("RANDMASK_DATA_CACHE", str(tmp_path / "cache"))
    for argv in (["evaluate", "--model", str(models / "M0")],
                 ["noise", "--models", str(models / "M0"), "--sigmas", "8", "--out", str(tmp_path / "x.csv"), *SMALL]):
        line = _refused(capsys, randmask_main, argv, root, fragment)
        assert str(root / "cifar10" / "test.npz") in line
    assert not (tmp_path / "x.csv").exists()


def test_a_good_small_data_file_still_evaluates(models, cifar8, tmp_path, monkeypatch, capsys):
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", x=cifar8[0], y=cifar8[1])
    monkeypatch.setenv("RANDMASK_DATA", str(tmp_path))
    monkeypatch.setenv("RANDMASK_DATA_CACHE", str(tmp_path / "cache"))
    code, out, err = run_main(randmask_main, ["evaluate", "--model", str(models / "M0")], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n"] == 8


@pytest.mark.parametrize("change, fragment", [
    (lambda x, y: (x, np.where(np.arange(len(y)) == 3, 255, y)), "label 255 of image 3 is outside 0-9"),
    (lambda x, y: (x[:, :28, :28], y), "images have shape (40, 28, 28, 3), expected N×32×32×3"),
    (lambda x, y: (x.astype(np.float32) / 255, y), "images are float32, expected uint8"),
    (lambda x, y: (x, y[:-1]), "40 images but 39 labels"),
    (lambda x, y: (x[:0], y[:0]), "holds no images"),
    (lambda x, y: (x, y.astype(np.float64)), "labels are float64"),
    (lambda x, y: (x, y[:, None]), "expected one integer per image"),
    (lambda x, y: (x, y.astype(np.int64) - 1), "label -1 of image"),
], ids=["label-255", "28x28", "float", "lengths", "empty", "float-labels", "labels-2d", "label-negative"])
def test_study_clean_set_refuses_bad_cifar_data_and_writes_nothing(tmp_path, capsys, monkeypatch, change, fragment):
    """The study reads CIFAR-10 itself (it never imports torch) but checks it with the models' loaders' own
    check (randmask.core.data_arrays), so no label 255 or 28x28 image reaches participants, in the same words."""
    from study.cli import main as study_main
    from study.sets import load_cifar10_test

    with np.load(Path(os.environ["RANDMASK_DATA"]) / "cifar10" / "test.npz") as d:
        x, y = change(d["x"][:40], d["y"][:40])
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    np.savez(tmp_path / "data" / "cifar10" / "test.npz", x=x, y=y)
    monkeypatch.setenv("RANDMASK_DATA", str(tmp_path / "data"))
    load_cifar10_test.cache_clear()
    try:
        _refused(capsys, study_main, ["clean-set", "--out", str(tmp_path / "set"), "--count", "5"], tmp_path, fragment)
    finally:
        load_cifar10_test.cache_clear()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["uint8", "int16", "float32", "bool"]),
       st.lists(st.integers(0, 40), min_size=1, max_size=5).map(tuple),
       st.sampled_from(["int64", "uint8", "int8", "float64"]),
       st.lists(st.integers(-3, 300), max_size=6), st.sampled_from(["cifar10", "mnist"]), st.booleans())
def test_any_data_arrays_are_accepted_sound_or_refused_in_one_line(x_dtype, x_shape, y_dtype, labels, dataset,
                                                                   near_valid):
    """The one data-file check (models' loaders and the study's alike): whatever the arrays, either one
    DataError line naming the source, or uint8 images of the data set's shape with a label 0-9 for each."""
    from randmask.core.datasets import DATASETS
    from randmask.core.errors import DataError
    from randmask.experiments.data import check_arrays

    if near_valid:  # the data set's own image shape, so the label rules are reached too
        c, h, w = DATASETS[dataset]
        x_shape = (len(labels), h, w) if c == 1 and len(x_shape) % 2 else (len(labels), h, w, c)
    x = np.zeros(x_shape, dtype=x_dtype)
    y = np.array(labels, dtype=np.int64).astype(y_dtype)  # out-of-range labels wrap as a file's would
    try:
        xs, ys = check_arrays(x, y, dataset, "some/test.npz")
    except DataError as exc:
        assert_one_line_exception(exc, (DataError,), "some/test.npz")
        return
    c, h, w = DATASETS[dataset]
    assert xs.dtype == np.uint8 and xs.shape == (len(ys), c, h, w) and len(ys) >= 1
    assert ys.dtype == np.int64 and ys.min() >= 0 and ys.max() <= 9 and list(ys) == list(y.astype(np.int64))
