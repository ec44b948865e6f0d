"""`randmask attack --indices` and `--also-correct`: several sets on the same test images (what `study
paper-study` builds its conditions from), chosen among those every named model classifies correctly."""
from __future__ import annotations

import csv

import pytest
import torch

from randmask.cli.main import main
from randmask.core.settings import zoo_root
from randmask.experiments.checkpoint import load_model
from randmask.experiments.data import load_tensors
from randmask.experiments.evaluate import predict

pytestmark = pytest.mark.usefixtures("data_dir")
SMALL = ["--width", "4", "--pool", "24", "--batch-size", "16", "--quiet", "--untrained"]
ZOO = zoo_root() / "cifar10"
NORMAL, MASKED = ZOO / "Normal_ResNet-18", ZOO / "0.9-Shallow"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def indices_of(folder) -> list[int]:
    with open(folder / "meta.csv", newline="") as handle:
        return [int(row["index"]) for row in csv.DictReader(handle)]


def test_indices_are_attacked_in_their_order_with_their_own_labels(tmp_path, capsys):
    out = tmp_path / "set"
    code, _, err = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--indices", "7, 3,11",
                       "--all-images", "--out", out, "--save-clean", *SMALL)
    assert code == 0, err
    assert indices_of(out) == [7, 3, 11]
    x, y = load_tensors("cifar10", "test", n=24)
    with open(out / "meta.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["true_label"]) for r in rows] == y[[7, 3, 11]].tolist()
    from randmask.experiments.adversarial_sets import read_png
    for row, index in zip(rows, [7, 3, 11], strict=True):
        assert torch.equal(read_png(out / row["clean_file"]), x[index])  # the image at that position, not the n-th


@pytest.fixture(scope="module")
def trained_predictions():
    """Which of the first 60 test images Normal ResNet-18 and 0.9-Shallow (the shipped zoo's) get right."""
    if not (NORMAL / "model.safetensors").exists() or not (MASKED / "model.safetensors").exists():
        pytest.skip("the shipped zoo's Normal ResNet-18 and 0.9-Shallow are needed")
    x, y = load_tensors("cifar10", "test", n=60)
    right = {}
    for folder in (NORMAL, MASKED):
        model, _ = load_model(folder, "cpu")
        right[folder.name] = (predict(model, x).argmax(1) == y).tolist()
    return right


def test_also_correct_keeps_only_images_every_named_model_classifies_correctly(tmp_path, capsys, trained_predictions):
    normal, masked = trained_predictions["Normal_ResNet-18"], trained_predictions["0.9-Shallow"]
    # a shuffled order in which 0.9-Shallow misses some images Normal ResNet-18 gets right
    order = list(range(59, -1, -1))
    both = [i for i in order if normal[i] and masked[i]]
    normal_only = [i for i in order if normal[i]]
    assert both[:6] != normal_only[:6]  # else this test could not tell the options apart
    common = ["--attack", "FGSM8", "--indices", ",".join(map(str, order)), "--n", "6", "--quiet", "--batch-size", "16"]
    code, _, err = run(capsys, "attack", "--model", NORMAL, "--also-correct", MASKED, "--out", tmp_path / "a", *common)
    assert code == 0, err
    assert indices_of(tmp_path / "a") == both[:6]
    # the masked net as the source, Normal ResNet-18 as the judge: the same images, so sets can be compared
    code, _, err = run(capsys, "attack", "--model", MASKED, "--also-correct", NORMAL, "--out", tmp_path / "b", *common)
    assert code == 0, err
    assert indices_of(tmp_path / "b") == both[:6]
    code, _, err = run(capsys, "attack", "--model", NORMAL, "--out", tmp_path / "c", *common)
    assert code == 0, err
    assert indices_of(tmp_path / "c") == normal_only[:6]  # the source alone decides without --also-correct


def test_too_few_qualifying_images_is_one_line_before_any_attack(tmp_path, capsys, trained_predictions):
    normal, masked = trained_predictions["Normal_ResNet-18"], trained_predictions["0.9-Shallow"]
    given = list(range(30))
    qualifying = sum(normal[i] and masked[i] for i in given)
    assert qualifying < len(given)
    code, _, err = run(capsys, "attack", "--model", NORMAL, "--also-correct", MASKED, "--attack", "PGD16",
                       "--indices", ",".join(map(str, given)), "--out", tmp_path / "set", "--quiet")
    assert code == 2 and err.count("\n") == 1, err
    assert (f"only {qualifying} of the 30 given images are classified correctly by Normal ResNet-18 and "
            f"0.9-Shallow; 30 were asked for") in err
    assert not (tmp_path / "set").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, fragment", [
    (["--indices", "3,x"], "--indices: 'x' is not a test-set position"),
    (["--indices", "3,-1"], "--indices: '-1' is not a test-set position"),
    (["--indices", "3,\u0663"], "is not a test-set position"),  # an Arabic-Indic digit: isdigit() alone takes it
    (["--indices", "3,,4"], "--indices: '' is not a test-set position"),
    (["--indices", " "], "--indices is empty"),
    (["--indices", "5,9,5"], "--indices: 5 appears twice"),
    (["--indices", "3,24"], "--indices: 24 is outside the first 24 test images (--pool) (0-23)"),
    (["--indices", "1,2", "--n", "5"], "--n 5 but --indices gives 2 images"),
    (["--indices", "1,2", "--all-images", "--also-correct", "VGG-19"], "give one of them"),
])
def test_bad_indices_are_one_line_and_write_nothing(tmp_path, capsys, extra, fragment):
    code, _, err = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--out",
                       tmp_path / "set", *extra, *SMALL)
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_without_indices_the_first_images_of_the_test_set_are_taken_as_before(tmp_path, capsys):
    code, _, err = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--n", "4",
                       "--all-images", "--out", tmp_path / "set", *SMALL)
    assert code == 0, err
    assert indices_of(tmp_path / "set") == [0, 1, 2, 3]
