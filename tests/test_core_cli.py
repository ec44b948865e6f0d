import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from randmask.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "randmask", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_info_reports_masked_layers_measured_from_the_mask(capsys):
    assert main(["info", "0.7-Shallow"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["notation"] == "0.7-Shallow" and info["arch"] == "ResNet-18" and info["params"] > 0
    layers = info["masked_layers"]
    assert [layer["block"] for layer in layers] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert layers[0]["shape"] == [16, 32, 32] and layers[5]["shape"] == [32, 16, 16]
    assert all(abs(layer["drop_ratio"] - 0.7) < 1e-3 for layer in layers)
    assert {"name", "block", "shape", "drop_ratio"} <= set(layers[0])


def test_info_canonicalises_aliases(capsys):
    assert main(["info", "0.9-shallowx2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["notation"] == "0.9-Shallow×2" and info["masked_layers"][0]["shape"][0] == 32


def test_models_lists_architectures_and_presets(capsys):
    assert main(["models"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "DenseNet-121" in listing["architectures"].values() and {"quick", "paper"} <= set(listing["presets"])


@pytest.mark.parametrize("args,fragment", [
    (["info", "1.2-Shallow"], "outside"),
    (["info", "0.5-Sideways"], "cannot read"),
    (["evaluate", "--model", "/no/such/folder"], "not a checkpoint folder"),
    (["train", "0.5-Shallow", "--out", "x", "--preset", "fast"], "unknown preset"),
    (["reproduce", "--only", "table2_transfer", "tabel11_transfer"], "unknown experiment 'tabel11_transfer'; known: "),
    (["zoo", "train", "--threads", "0", "--only", "cifar10/0.7-Shallow"], "--threads must be at least 1, got 0"),
    (["train", "0.5-Shallow", "--out", "x", "--lr", "nan"], "lr must be a positive finite number, got nan"),
    (["train", "0.5-Shallow", "--out", "x", "--train-n", "0"], "train_n must be at least 1"),
    (["ensemble", "assets/zoo/cifar10/0.7-Shallow", "--out", "x"], "an EN joins 2 to 10 members, not 1"),
])
def test_errors_are_one_line_and_nonzero(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and fragment in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_train_then_evaluate_from_the_cli(tmp_path, data_dir):
    out = tmp_path / "m"
    proc = run_cli("train", "0.5-ShallowDC", "--out", str(out), "--epochs", "1", "--width", "4", "--train-n", "256",
                   "--eval-n", "100", "--no-bar")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["checkpoint"] == str(out)
    proc = run_cli("evaluate", "--model", str(out), "--n", "50")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["n"] == 50 and 0 <= last["ci_low"] <= last["accuracy"] <= last["ci_high"] <= 1
    assert last["model"] == "0.5-ShallowDC"
    from randmask.experiments.checkpoint import load_model
    from randmask.experiments.data import load_tensors
    from randmask.experiments.evaluate import predict, top2_logit_gaps
    from randmask.experiments.train import accuracy

    model, _ = load_model(out)
    x, y = load_tensors("cifar10", "test", n=50)
    logits = predict(model, x)
    gaps = top2_logit_gaps(logits)
    assert last["accuracy"] == accuracy(model, x, y)[0] / 50  # same answer as the trainer's own measure
    assert last["logit_gap_median"] == round(gaps.median().item(), 2) and last["logit_gap_max"] >= last["logit_gap_median"]
    assert torch.equal(gaps, logits.max(1).values - logits.sort(1).values[:, -2]) and (gaps >= 0).all()


@pytest.mark.parametrize("flags, expected", [([], "default"), (["--no-cache"], False), (["--cache", "sets"], "sets")])
def test_reproduce_cli_passes_the_crafted_set_cache_choice(monkeypatch, flags, expected):
    import randmask.results.reproduce
    from randmask.core.settings import crafted_cache_root

    if expected == "default":  # the folder the CLI counts crafted sets in is the one reproduce uses
        expected = str(crafted_cache_root())

    seen = {}
    monkeypatch.setattr(randmask.results.reproduce, "reproduce", lambda preset, **kw: seen.update(kw, preset=preset) or {})
    assert main(["reproduce", "--only", "table3_shuffle", "--no-bar", *flags]) == 0
    assert seen["preset"] == "quick" and seen["only"] == ["table3_shuffle"]
    assert seen["cache"] == (Path(expected) if isinstance(expected, str) else expected)
    assert seen["jobs"] == 1


def test_reproduce_says_whether_its_run_was_cold_or_warm(monkeypatch, capsys, tmp_path):
    import randmask.results.reproduce

    def crafts(names):
        def fake(preset, **kw):
            for name in names:
                (tmp_path / f"{name}.safetensors").write_bytes(b"")
            return {}
        return fake

    for names, kind in [([], "no attacks: 0 crafted set(s) in"), (["a", "b"], "cold: 0 crafted set(s) in"),
                        ([], "warm: 2 crafted set(s) in"), (["c"], "partly cached: 2 crafted set(s) in")]:
        monkeypatch.setattr(randmask.results.reproduce, "reproduce", crafts(names))
        assert main(["reproduce", "--no-bar", "--cache", str(tmp_path)]) == 0
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("reproduce --preset quick: total wall time ") and kind in line
        assert line.endswith(f"before, {len(names)} crafted this run)")
    assert main(["reproduce", "--no-bar", "--no-cache"]) == 0
    assert capsys.readouterr().err.strip().endswith("(no crafted-set cache)")


def test_reproduce_jobs_flag_reaches_the_pipeline_and_a_bad_count_is_one_line(monkeypatch, capsys):
    import randmask.results.reproduce

    seen = {}
    monkeypatch.setattr(randmask.results.reproduce, "reproduce", lambda preset, **kw: seen.update(kw) or {})
    assert main(["reproduce", "--no-bar", "--jobs", "2"]) == 0 and seen["jobs"] == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["reproduce", "--no-bar", "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: jobs must be at least 1, not 0"


def test_exact_flag_sets_the_attack_mode_for_one_command_only(monkeypatch):
    from randmask.attacks import exact_default
    from randmask.cli.main import attack_mode, build_parser

    args = build_parser().parse_args(["transfer", "--source", "a", "--targets", "b", "--out", "x.csv", "--exact"])
    assert args.exact
    assert not build_parser().parse_args(["reproduce"]).exact
    monkeypatch.delenv("RANDMASK_EXACT", raising=False)
    with attack_mode(True):
        assert exact_default()
    assert not exact_default() and "RANDMASK_EXACT" not in os.environ
    monkeypatch.setenv("RANDMASK_EXACT", "1")
    with attack_mode(False):  # no flag: the caller's own setting stands
        assert exact_default()
    assert exact_default()
