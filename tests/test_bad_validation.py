"""One validation per kind of thing, called by every command that takes it: a checkpoint, an attack setting,
a notation, a study database, a data file. Each bad input is refused in one line (exit 2), with every file of
the working folder unchanged, whichever command is given it."""
from __future__ import annotations

from pathlib import Path

import pytest
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state
from safetensors.torch import load_file, save_file

from randmask.checkpoint import WEIGHTS_FILE, save_checkpoint
from randmask.cli import main as randmask_main
from randmask.models import build_model

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
