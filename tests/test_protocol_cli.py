"""`python -m randmask` attack and protocol commands, on tiny untrained models (smoke + error handling)."""

import csv
import json

import pytest
import torch

from randmask.cli.main import main
from randmask.experiments.protocols import COLUMNS

pytestmark = pytest.mark.usefixtures("data_dir")
SMALL = ["--width", "4", "--pool", "24", "--batch-size", "16", "--quiet", "--untrained"]


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_attack_writes_a_set_and_warns_about_untrained_models(tmp_path, capsys):
    out = tmp_path / "set"
    code, stdout, stderr = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "PGD2,4", "--n", "5",
                               "--out", str(out), "--all-images", "--predict", "0.5-Shallow", *SMALL)
    assert code == 0, stderr
    assert "UNTRAINED" in stderr
    meta = rows_of(out / "meta.csv")
    assert [r["index"] for r in meta] == ["0", "1", "2", "3", "4"]
    assert {"pred:0.5-Shallow", "file", "linf", "l2", "source_pred"} <= set(meta[0])
    assert all(float(r["linf"]) <= 4 and (out / r["file"]).exists() for r in meta)
    assert json.loads(stdout.splitlines()[-1])["images"] == 5
    # a second run into the same folder is refused in one line, and the set survives
    code, _, stderr = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--n", "5",
                          "--out", str(out), "--all-images", *SMALL)
    assert code == 2 and stderr.count("\n") == 1 and "already exists" in stderr
    assert rows_of(out / "meta.csv")[0]["attack"] == "PGD2,4"


def test_an_attack_that_changes_nothing_says_so_and_why(tmp_path, capsys):
    """CW40 on an untrained net: no image reaches a margin of 40, so CW hands every image back untouched. The
    summary counts them and a warning says why and what to change; an attack that moves every image stays quiet."""
    code, stdout, stderr = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "CW40(search=1, steps=3)",
                               "--n", "3", "--out", str(tmp_path / "cw"), "--all-images", *SMALL)
    assert code == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["unchanged"] == 3
    warning = [line for line in stderr.splitlines() if line.startswith("warning: CW40")]
    assert len(warning) == 1 and "every image unchanged" in warning[0] and "Lower κ" in warning[0]
    code, stdout, stderr = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--n", "3",
                               "--out", str(tmp_path / "fgsm"), "--all-images", *SMALL)
    assert code == 0 and json.loads(stdout.splitlines()[-1])["unchanged"] == 0
    assert "unchanged" not in stderr


def test_transfer_from_a_checkpoint_folder(tmp_path, capsys):
    from randmask.core.models import build_model
    from randmask.experiments.checkpoint import save_checkpoint

    folder = save_checkpoint(build_model("VGG-19", width=4), tmp_path / "vgg")
    out = tmp_path / "t.csv"
    code, stdout, stderr = run(capsys, "transfer", "--source", str(folder), "--targets", "Normal ResNet-18",
                               "--attack", "FGSM8", "PGD2,4", "--n", "6", "--out", str(out), *SMALL)
    assert code == 0, stderr
    rows = rows_of(out)
    assert list(rows[0])[:len(COLUMNS)] == list(COLUMNS)
    assert [(r["source"], r["target"], r["attack"], r["metric"]) for r in rows] == [
        ("VGG-19", "Normal ResNet-18", "FGSM8", "defense_rate"),
        ("VGG-19", "Normal ResNet-18", "PGD2,4", "defense_rate"),
        ("", "VGG-19", "", "clean_accuracy"), ("", "Normal ResNet-18", "", "clean_accuracy")]
    assert all(int(r["n_attacked"]) <= 6 for r in rows[:2])
    assert rows[2]["n"] == "24"
    assert json.loads(stdout.splitlines()[-1]) == {"out": str(out), "rows": 4}


def test_graybox_labels_other_init_and_dif(tmp_path, capsys):
    out = tmp_path / "g.csv"
    code, _, stderr = run(capsys, "graybox", "--sources", "0.5-Shallow", "--targets", "0.5-Shallow@seed=1",
                          "0.5-Shallow@mask_seed=1", "VGG-19", "--n", "4", "--out", str(out), *SMALL)
    assert code == 0, stderr
    rows = [r for r in rows_of(out) if r["metric"] == "defense_rate"]
    assert [(r["target"], r["relation"]) for r in rows] == [
        ("0.5-Shallow (0.5-Shallow@seed=1)", "other init"), ("0.5-Shallow (0.5-Shallow@mask_seed=1)", "DIF"),
        ("VGG-19", "other architecture")]
    assert {r["attack"] for r in rows} == {"FGSM16"}


@pytest.mark.parametrize("argv, protocol, attacks", [
    (["whitebox", "--models", "0.7-Shallow", "--attack", "FGSM1", "PGD1,4,2"], "whitebox", {"", "FGSM1", "PGD1,4,2"}),
    (["madry", "--source", "Normal ResNet-18", "--targets", "0.85-Shallow", "--n", "3"], "madry",
     {"FGSM8", "PGD2,7,8", ""}),
    (["noise", "--models", "Normal ResNet-18", "--sigmas", "8", "32"], "noise", {"noise0", "noise8", "noise32"}),
    (["shuffle", "--models", "Normal ResNet-18", "0.7-Shallow", "--k", "2", "4", "--min-confidence", "0"],
     "shuffle", {"shuffle2x2", "shuffle4x4"}),
    (["mnist", "--source", "DenseNet-121", "--targets", "0.9-Shallow", "--n", "2"], "mnist",
     {"PGD2.55,40,76.5", ""}),
])
def test_protocol_commands_write_tidy_csv(tmp_path, capsys, argv, protocol, attacks):
    out = tmp_path / "p.csv"
    code, stdout, stderr = run(capsys, *argv, "--out", str(out), *SMALL)
    assert code == 0, stderr
    rows = rows_of(out)
    assert {r["protocol"] for r in rows} == {protocol}
    assert {r["attack"] for r in rows} == attacks
    for r in rows:
        n = int(r["n"])
        if n:
            assert 0 <= float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) <= 1
    if protocol == "mnist":
        assert {r["dataset"] for r in rows} == {"mnist"}


@pytest.mark.parametrize("argv, fragment", [
    (["attack", "--model", "Normal ResNet-18", "--attack", "BIM8", "--out", "{tmp}/x"], "unknown attack 'BIM'"),
    (["attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--n", "0", "--out", "{tmp}/x"], "--n must be"),
    (["transfer", "--source", "{tmp}/missing/", "--targets", "VGG-19", "--out", "{tmp}/t.csv"], "missing"),
    (["transfer", "--source", "0.5-Shallowz", "--targets", "VGG-19", "--out", "{tmp}/t.csv"], "0.5-Shallowz"),
    (["noise", "--models", "VGG-19@seed=x", "--out", "{tmp}/n.csv"], "seed=N"),
    (["mnist", "--source", "VGG-19", "--targets", "VGG-19", "--dataset", "cifar10", "--out", "{tmp}/m.csv"],
     "runs on mnist"),
    (["shuffle", "--models", "VGG-19", "--k", "5", "--min-confidence", "0", "--out", "{tmp}/s.csv"],
     "does not divide"),
    (["noise", "--models", "VGG-19", "--sigmas", "-2", "--out", "{tmp}/n.csv"], "sigmas must be"),
    (["noise", "--models", "VGG-19", "--sigmas", "8", "nan", "--out", "{tmp}/n.csv"], "sigmas must be finite"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, fragment):
    code, _, stderr = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv], *SMALL)
    lines = [line for line in stderr.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], stderr


def test_a_zero_batch_size_is_refused_by_name_before_any_work(tmp_path, capsys):
    small = [a if a != "16" else "0" for a in SMALL]  # SMALL's --batch-size 16 becomes 0
    code, _, stderr = run(capsys, "attack", "--model", "Normal ResNet-18", "--attack", "FGSM8", "--out",
                          str(tmp_path / "x"), *small)
    lines = [line for line in stderr.splitlines() if not line.startswith("warning:")]
    assert code == 2 and lines == ["error: --batch-size must be at least 1, got 0"] and not (tmp_path / "x").exists()


def test_a_bare_notation_needs_the_untrained_flag(tmp_path, capsys):
    out = tmp_path / "n.csv"
    code, _, stderr = run(capsys, "noise", "--models", "VGG-19", "--out", str(out),
                          *[a for a in SMALL if a != "--untrained"])
    assert code == 2 and stderr.count("\n") == 1 and "pass --untrained" in stderr and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_asking_for_cuda_without_it_is_a_user_error(tmp_path, capsys):
    code, _, stderr = run(capsys, "noise", "--models", "VGG-19", "--device", "cuda", "--out", str(tmp_path / "n.csv"),
                          *SMALL)
    assert code == 2 and "CUDA is not available" in stderr
