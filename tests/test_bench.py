"""The benchmarks stay runnable: bench_core trains the quick preset both ways and the two loss curves agree,
bench_attacks compares with torchattacks, bench_app builds the gallery and loads the zoo.
(Times themselves are never asserted: speed targets live in the benchmarks' own output.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from randmask.core.device import cpu_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_core_times_both_paths_of_the_preset_and_their_loss_curves_agree(data_dir):
    run = subprocess.run([sys.executable, "bench/bench_core.py", "--steps", "4", "--chunk", "2", "--eval-n", "100",
                          "--threads", "1", "--rounds", "1", "--width", "4", "--batch", "16", "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    epochs = dict(re.findall(r"^  (old|new): .*epoch ~ ([\d.]+)s$", run.stdout, re.M))
    assert set(epochs) == {"old", "new"} and all(float(v) > 0 for v in epochs.values())
    ratio = float(re.search(r"epoch-time ratio new/old = ([\d.]+)", run.stdout).group(1))
    assert ratio == pytest.approx(float(epochs["new"]) / float(epochs["old"]), abs=2e-3)
    low, high = map(float, re.search(r"new/old median [\d.]+, range ([\d.]+)-([\d.]+) over 2 chunks", run.stdout).groups())
    assert 0 < low <= high
    assert "(bf16 tolerance <= 0.02: met)" in run.stdout  # both paths train the same net from the same seed
    assert cpu_model() in run.stdout  # figures are named with the CPU they were measured on
    masked = re.findall(r"^(Normal ResNet-18|0\.7-Shallow|0\.5-Deep|0\.5-ShallowSM) +[\d.]+ +([\d.]+)", run.stdout,
                        re.M)
    assert [name for name, _ in masked] == ["Normal ResNet-18", "0.7-Shallow", "0.5-Deep", "0.5-ShallowSM"]
    assert masked[0][1] == "1.000"


@pytest.mark.slow
def test_bench_app_builds_the_gallery_and_loads_every_model(data_dir):
    run = subprocess.run([sys.executable, "-m", "bench.bench_app", "--only", "gallery", "--repeats", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    median, ratio = map(float, re.search(r"^gallery  median ([\d.]+) s / target 3 s = ([\d.]+)$", run.stdout,
                                         re.M).groups())
    assert median > 0 and ratio == pytest.approx(median / 3, abs=0.01)
    assert f"machine: {cpu_model()};" in run.stdout
    run = subprocess.run([sys.executable, "-m", "bench.bench_app", "--only", "memory"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    count, total, imports = re.search(r"^memory   (\d+) .* RSS ([\d.]+) GiB \(imports alone ([\d.]+) GiB\)$",
                                      run.stdout, re.M).groups()
    assert int(count) >= 2 and float(total) >= float(imports) > 0


@pytest.mark.slow
def test_bench_app_first_steps_prints_train_start_home_and_switch_figures(data_dir):
    """The three figures of issue 33 item 5, each wall and CPU time with its ratio to the target; the train start
    ends at the trainer's step-1 record (it used to log only every tenth of an epoch)."""
    run = subprocess.run([sys.executable, "-m", "bench.bench_app", "--only", "first", "--rounds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"machine: {cpu_model()};" in run.stdout and "OpenMP waits" in run.stdout
    starts = re.findall(r"^train    start -> first step \((first run on this machine|a later run)\): ([\d.]+) s, "
                        r"CPU ([\d.]+) s / target 15 s = ([\d.]+)$", run.stdout, re.M)
    assert [when for when, *_ in starts] == ["first run on this machine", "a later run"]
    for _, wall, cpu, ratio in starts:
        assert float(wall) > 0 and float(cpu) > 0 and float(ratio) == pytest.approx(float(wall) / 15, abs=0.01)
    assert re.search(r"^train    a later run: building the model at [\d.]+, .*step 1 done at [\d.]+$", run.stdout,
                     re.M)
    wall, cpu, ratio = map(float, re.search(r"^home     new session on the warm server: median ([\d.]+) s, server "
                                            r"CPU ([\d.]+) s over 1 / target 2 s = ([\d.]+)$", run.stdout,
                                            re.M).groups())
    assert wall > 0 and cpu >= 0 and ratio == pytest.approx(wall / 2, abs=0.01)
    wall, cpu, ratio = map(float, re.search(r"^switch   slowest page median ([\d.]+) s \(server CPU ([\d.]+) s\) / "
                                            r"target 1 s = ([\d.]+)$", run.stdout, re.M).groups())
    assert wall > 0 and cpu >= 0 and ratio == pytest.approx(wall, abs=0.01)


@pytest.mark.slow
def test_bench_attacks_compares_each_attack_with_torchattacks(data_dir):
    run = subprocess.run([sys.executable, "bench/bench_attacks.py", "--n", "16", "--batch", "16", "--pgd-steps", "2",
                          "--rounds", "1", "--only", "pgd"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for attack in ("PGD", "PGD-rs"):
        ratio, ours, theirs = re.search(rf"^{attack} time ratio ours/torchattacks = ([\d.]+) .*success ours ([\d.]+)% "
                                        r"vs (?:torchattacks|ours exact) ([\d.]+)%", run.stdout, re.M).groups()
        assert float(ratio) > 0 and abs(float(ours) - float(theirs)) <= 1  # same start: same images fooled
    # without a random start the exact mode reproduces torchattacks.BIM image for image
    assert re.search(r"^  wall-time ratio .*exact images identical to torchattacks': True$", run.stdout, re.M)
    assert run.stdout.count("every image in its eps-ball on [0,1]: True") == 6
    assert cpu_model() in run.stdout


def test_bench_core_refuses_a_missing_cuda_device_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    run = subprocess.run([sys.executable, "bench/bench_core.py", "--device", "cuda"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].endswith("--device cuda: no CUDA device here")


def test_compare_results_matches_rows_by_name_and_reports_each_gap(tmp_path):
    import pandas as pd

    def table(correct: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"protocol": "transfer", "dataset": "cifar10", "source": "DenseNet-121",
                             "target": ["0.7-Shallow", "Normal ResNet-18", "0.5-Shallow, 0.5-Deep"][:len(correct)],
                             "attack": "PGD16", "metric": "defense_rate", "n": 100, "correct": correct,
                             "accuracy": [c / 100 for c in correct], "seed": 0})

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    table([60, 10, 40]).to_csv(old / "table2_transfer.csv", index=False)
    table([60, 13]).to_csv(new / "table2_transfer.csv", index=False)  # one row changed, one gone
    pd.DataFrame({"x": [1]}).to_csv(new / "notes.csv", index=False)  # only in one folder: ignored
    run = subprocess.run([sys.executable, "bench/compare_results.py", str(old), str(new), "--gap", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == ("table2_transfer: 2 rows matched, 1 only in the old, 0 only in the new; same n and correct: 1;"
                        " largest gap 3.0 points (DenseNet-121 -> Normal ResNet-18: PGD16 defense_rate)")
    assert lines[1] == "    DenseNet-121 -> Normal ResNet-18: PGD16 defense_rate: 3.0 points (n 100 / 100)"
    assert lines[-1] == "1 tables, 2 rows matched, 1 with the same n and correct"


def test_the_call_counter_sees_the_fast_paths_calls_through_its_model_copy():
    """The fast path attacks a deep copy of the model: bench_attacks' counter must count there too (its CW row
    read '0 model calls per image' for ours)."""
    import torch
    from test_attack_support import TinyCNN

    from randmask.attacks import FGSM

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_attacks import Counted
    finally:
        sys.path.remove(str(ROOT / "bench"))
    counted = Counted(TinyCNN(width=4).eval())
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    FGSM(counted, eps=4).run(x, y)  # fast: on the copy
    fast = counted.images
    counted.images = 0
    FGSM(counted, eps=4, exact=True).run(x, y)
    assert fast >= 6 and counted.images >= 6  # one gradient pass and one measuring pass at least, each path


def test_bench_app_starts_its_fresh_processes_so_that_the_test_server_imports():
    """--compare-omp runs the benchmark again in fresh processes; as a script (not a module) `tests` did not
    import and it died with StopIteration."""
    sys.path.insert(0, str(ROOT))
    from bench.bench_app import BENCH_COMMAND

    run = subprocess.run([*BENCH_COMMAND, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--compare-omp" in run.stdout
