import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from randmask.core.errors import RandmaskError
from randmask.experiments.checkpoint import load_model
from randmask.experiments.train import assemble_ensemble, lr_at, random_crop_flip, train
from randmask.experiments.train_config import PRESETS, make_config

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(width=4, train_n=256, eval_n=128, batch_size=64, log_every=1)


def test_presets_follow_the_paper_and_the_cpu_budget():
    paper = make_config("0.7-Shallow", "paper")
    assert (paper.width, paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == (
        64, 350, 128, 0.1, 0.9, 5e-4)
    assert paper.milestones == (150, 250) and paper.schedule == "step" and paper.augment
    assert lr_at(paper, 149 * 391, 391) == pytest.approx(0.1)
    assert lr_at(paper, 150 * 391, 391) == pytest.approx(0.01)
    assert lr_at(paper, 250 * 391, 391) == pytest.approx(0.001)
    quick = make_config("0.7-Shallow", "quick")
    assert quick.width == PRESETS["quick"]["width"] < 64
    total = quick.epochs * 100
    assert lr_at(quick, 0, 100) == 0 and lr_at(quick, total, 100) == 0
    assert max(lr_at(quick, s, 100) for s in range(total)) == pytest.approx(quick.lr)


def test_bad_settings():
    with pytest.raises(RandmaskError, match="unknown preset"):
        make_config("0.5-Shallow", "fast")
    with pytest.raises(RandmaskError, match="unknown training setting"):
        make_config("0.5-Shallow", "quick", epoch=3)
    with pytest.raises(RandmaskError, match="epochs"):
        make_config("0.5-Shallow", "quick", epochs=0)
    for setting, value, message in [("lr", float("inf"), "lr must be a positive finite number"),
                                    ("lr", -0.1, "lr must be a positive finite number"),
                                    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
                                    ("label_smoothing", float("nan"), "label_smoothing must be in"),
                                    ("warmup", -0.1, "warmup must be in"),
                                    ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0"),
                                    ("eval_n", 0, "eval_n must be at least 1")]:
        with pytest.raises(RandmaskError, match=message):
            make_config("0.5-Shallow", "quick", **{setting: value})
    assert make_config("0.5-Shallow", "quick", momentum=0.0, label_smoothing=0.0, weight_decay=0.0, train_n=1)


def test_quick_preset_is_channels_last_except_where_torch_cannot():
    assert make_config("0.7-Shallow", "quick").channels_last
    assert not make_config("0.7-Shallow", "quick", width=4).channels_last  # preset default dropped, not an error
    assert not make_config("0.7-Shallow", "quick", channels_last=False).channels_last
    with pytest.raises(RandmaskError, match="channels_last needs width >= 8"):
        make_config("0.7-Shallow", "quick", width=4, channels_last=True)


@pytest.mark.agreement
@pytest.mark.parametrize("shape,flip,dtype", [((5, 3, 8, 8), True, torch.float32), ((5, 3, 6, 10), True, torch.uint8),
                                              ((5, 1, 7, 7), False, torch.uint8)])
def test_crop_flip_matches_a_plain_loop(shape, flip, dtype):
    x = (torch.rand(*shape) * 255).to(dtype)
    n, _, h, w = shape
    shifts, flips = torch.randint(0, 9, (n, 2)), torch.tensor([True, False, True, False, True])
    out = random_crop_flip(x, shifts, flips, flip=flip)
    assert out.shape == x.shape and out.dtype == dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(n):
        crop = padded[i, :, shifts[i, 0]:shifts[i, 0] + h, shifts[i, 1]:shifts[i, 1] + w]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] and flip else crop)


def test_short_training_lowers_the_loss_and_writes_a_checkpoint(tmp_path, data_dir):
    cfg = make_config("0.5-Shallow", "quick", epochs=3, lr=0.05, **TINY)
    result = train(cfg, tmp_path / "run", show_bar=False)
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    model, config = load_model(tmp_path / "run")
    assert config["clean_accuracy"] == result["clean_accuracy"] and config["train_time_s"] > 0
    assert config["recipe"]["epochs"] == 3 and config["code_version"]
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records if r["event"] != "stage"]
    assert events[0] == "start" and events[-1] == "done" and events.count("epoch") == 3 and "step" in events
    # what a starting job is doing, said before its first step record
    assert [r["what"] for r in records if r["event"] == "stage"] == [
        "building the model", "loading the training images", "loading the test images",
        "choosing the training precision",
        "the first training steps"]
    assert records[0]["event"] == "stage" and records[4]["event"] == "start"
    assert not (tmp_path / "run" / "resume.pt").exists()
    with pytest.raises(RandmaskError, match="already holds"):
        train(cfg, tmp_path / "run", show_bar=False)


@pytest.mark.agreement
@pytest.mark.parametrize("width", [4, 8], ids=["nchw", "channels_last"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, data_dir, width):
    cfg = make_config("0.7-Shallow", "quick", epochs=3, **{**TINY, "width": width})
    assert cfg.channels_last == (width >= 8)
    train(cfg, tmp_path / "straight", show_bar=False)

    def stop_after_first_epoch(record):
        if record["event"] == "epoch" and record["epoch"] == 1:
            raise KeyboardInterrupt

    torch.manual_seed(999)  # the resumed run must not depend on the caller's RNG
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=stop_after_first_epoch, show_bar=False)
    assert (tmp_path / "resumed" / "resume.pt").exists()
    train(cfg, tmp_path / "resumed", show_bar=False)
    a, _ = load_model(tmp_path / "straight")
    b, _ = load_model(tmp_path / "resumed")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    with pytest.raises(RandmaskError, match="different training config"):
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "again", progress=stop_after_first_epoch, show_bar=False)
        train(make_config("0.7-Shallow", "quick", epochs=4, **{**TINY, "width": width}), tmp_path / "again",
              show_bar=False)


def test_ensemble_training_assembles_members(tmp_path, data_dir):
    cfg = make_config("0.5-ShallowEN2", "quick", epochs=1, **TINY)
    result = train(cfg, tmp_path / "en", show_bar=False)
    model, config = load_model(tmp_path / "en")
    assert config["notation"] == "0.5-ShallowEN2" and len(model.members) == 2
    assert len(result["member_accuracies"]) == 2
    member, member_config = load_model(tmp_path / "en" / "members" / "1")
    assert member_config["mask_seed"] == 1
    assert torch.equal(member.body.mask1.mask, model.members[1].body.mask1.mask)
    assert config["members"] == [str(tmp_path / "en" / "members" / str(i)) for i in range(2)]  # outside the cwd


def test_an_assembled_ensemble_records_its_members_relative_to_the_working_directory(tmp_path, data_dir,
                                                                                      monkeypatch):
    for seed in range(2):
        train(make_config("0.5-Shallow", "quick", epochs=1, seed=seed, mask_seed=seed, **TINY),
              tmp_path / "runs" / f"m{seed}", show_bar=False)
    monkeypatch.chdir(tmp_path)
    result = assemble_ensemble([tmp_path / "runs" / "m0", "runs/m1"], tmp_path / "en", eval_n=64)
    assert result["members"] == ["runs/m0", "runs/m1"]  # no machine paths in a shipped zoo config
    assert load_model(tmp_path / "en")[1]["members"] == ["runs/m0", "runs/m1"]


@pytest.mark.slow
def test_torchrun_ddp_with_two_cpu_processes(tmp_path, data_dir):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "randmask",
           "train", "0.5-Shallow", "--out", str(out), "--epochs", "2", "--width", "4", "--train-n", "256",
           "--eval-n", "128", "--batch-size", "64", "--no-bar"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["event"] == "start")
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 4  # 256 images, 32 per process per step
    assert sum(r["event"] == "start" for r in records) == 1  # only rank 0 logs
    model, config = load_model(out)
    assert config["world_size"] == 2 and 0.0 <= config["clean_accuracy"] <= 1.0


@pytest.mark.agreement
def test_crop_flip_on_uint8_gives_the_float_pipelines_batches():
    # epoch_batches crops and flips the uint8 images, then scales: the same batches as scaling first
    from randmask.experiments.train import epoch_batches

    gen = torch.Generator().manual_seed(5)
    x, y = torch.randint(0, 256, (300, 3, 8, 8), generator=gen, dtype=torch.uint8), torch.arange(300)
    cfg = make_config("0.7-Shallow", "quick", batch_size=64)
    order_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + 2)
    order = torch.randperm(300, generator=order_gen)
    flips = torch.rand(300, generator=order_gen) < 0.5
    shifts = torch.randint(0, 9, (300, 2), generator=order_gen)
    batches = list(epoch_batches(x, y, cfg, 2))
    assert len(batches) == 5
    for i, (xb, yb) in enumerate(batches):
        part = slice(64 * i, 64 * (i + 1))
        want = random_crop_flip(x[order[part]].float().div_(255), shifts[part], flips[part])
        assert xb.dtype == torch.float32 and torch.equal(xb, want) and torch.equal(yb, order[part])


def test_training_batches_stay_where_they_are_on_a_cpu():
    from randmask.experiments.train import where_batches_are_drawn

    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4)
    got_x, got_y = where_batches_are_drawn(x, y, torch.device("cpu"))
    assert got_x is x and got_y is y
    from randmask.experiments.train import _UNIT, to_unit_floats

    every = torch.arange(256, dtype=torch.uint8)  # the table a GPU reads gives the CPU's division
    assert torch.equal(to_unit_floats(every), _UNIT[every.long()]) and _UNIT[255] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_drawn_on_the_gpu_are_the_cpus_bit_for_bit():
    from randmask.experiments.train import epoch_batches, where_batches_are_drawn

    gen = torch.Generator().manual_seed(6)
    x, y = torch.randint(0, 256, (300, 3, 8, 8), generator=gen, dtype=torch.uint8), torch.arange(300)
    cfg = make_config("0.7-Shallow", "quick", batch_size=64)
    on_gpu = list(epoch_batches(*where_batches_are_drawn(x, y, torch.device("cuda")), cfg, 3))
    on_cpu = list(epoch_batches(x, y, cfg, 3))
    assert len(on_gpu) == len(on_cpu) == 5
    for (xg, yg), (xc, yc) in zip(on_gpu, on_cpu, strict=True):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


class FakeClock:
    """process_time for bf16_probe: each step advances it by a set CPU time per dtype (no real timing)."""

    def __init__(self, seconds):
        self.now, self.seconds, self.calls = 0.0, seconds, []

    def step(self, dtype):
        self.calls.append(dtype)
        self.now += self.seconds[dtype]

    def __call__(self):
        return self.now


@pytest.mark.parametrize("fp32, bf16, pays", [(1.0, 0.6, True), (1.0, 0.9, False), (0.2, 5.0, False)])
def test_bf16_is_chosen_only_where_it_measures_clearly_faster(monkeypatch, fp32, bf16, pays):
    import randmask.core.device as device

    clock = FakeClock({None: fp32, torch.bfloat16: bf16})
    monkeypatch.setattr(device.time, "process_time", clock)
    assert device.bf16_pays(clock.step) is pays
    assert set(clock.calls) == {None, torch.bfloat16}
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: False)
    clock.calls.clear()
    choice = device.choose_precision(torch.device("cpu"), "auto", probe=clock.step)
    assert choice.dtype == (torch.bfloat16 if pays else None)
    assert f"{1e3 * bf16:.0f} ms bf16 vs {1e3 * fp32:.0f} ms fp32" in choice.reason  # the log says why
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)  # no native bf16: no probe at all
    clock.calls.clear()
    assert device.autocast_dtype(torch.device("cpu"), "auto", probe=clock.step) is None and not clock.calls
    assert device.autocast_dtype(torch.device("cpu"), "bf16", probe=clock.step) == torch.bfloat16


def test_a_load_spike_during_the_probe_does_not_decide_the_precision(monkeypatch):
    """Other processes stretch the wall time of whichever step they overlap (here every fp32 step looks 2.5x
    faster than bf16 by the wall clock); the probe times CPU time, which they do not stretch, and keeps bf16."""
    import randmask.core.device as device

    cpu = FakeClock({None: 1.0, torch.bfloat16: 0.6})
    wall = {"now": 0.0}

    def step(dtype):
        cpu.step(dtype)
        wall["now"] += 1.0 if dtype is None else 0.6 * 4  # a spike lands on every bf16 step

    monkeypatch.setattr(device.time, "process_time", cpu)
    monkeypatch.setattr(device.time, "perf_counter", lambda: wall["now"])
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: False)
    assert device.choose_precision(torch.device("cpu"), "auto", probe=step).dtype == torch.bfloat16


def test_amx_decides_bf16_without_a_probe(monkeypatch, tmp_path):
    import randmask.core.device as device

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert device.cpu_has_amx_bf16(info)
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert not device.cpu_has_amx_bf16(info)
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: True)
    calls = []
    choice = device.choose_precision(torch.device("cpu"), "auto", probe=calls.append)
    assert choice.dtype == torch.bfloat16 and not calls and "AMX" in choice.reason


def test_the_precision_probe_leaves_the_random_streams_alone(monkeypatch):
    import randmask.core.device as device
    import randmask.experiments.train_config as train_config

    monkeypatch.setattr(train_config, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: False)  # an AMX CPU decides without a probe
    monkeypatch.setattr(train_config, "_PRECISION_PROBES", {})
    seen = []

    def fp32_wins(step, rounds=3):  # runs the real step (draws from the RNG: the Dropout control resamples)
        step(None)
        step(torch.bfloat16)
        seen.append(1)
        return 1.0, 1.0

    monkeypatch.setattr(device, "bf16_probe", fp32_wins)
    cfg = make_config("0.7-ShallowDropout", "quick", width=8, batch_size=8)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert train_config.training_precision(cfg, torch.device("cpu")).dtype is None
    assert torch.equal(torch.get_rng_state(), state) and seen == [1]
    train_config.training_precision(cfg, torch.device("cpu"))  # remembered per process and shape: no second probe
    assert seen == [1]


def test_a_later_run_reuses_the_probe_measured_on_this_cpu_and_torch(monkeypatch, tmp_path):
    """The probe cost ~7 s of CPU before every run's first step (issue 33): a later process on the same CPU and
    torch reuses its answer, and says so; another torch version probes again."""
    import randmask.core.device as device
    import randmask.experiments.train_config as train_config

    monkeypatch.setattr(train_config, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: False)
    monkeypatch.setenv("RANDMASK_PRECISION_CACHE", str(tmp_path / "cache" / "probes.json"))
    probes = []

    def bf16_wins(step, rounds=3):
        probes.append(1)
        return 1.0, 0.5

    monkeypatch.setattr(device, "bf16_probe", bf16_wins)
    cfg = make_config("0.7-Shallow", "quick", width=8, batch_size=8)
    monkeypatch.setattr(train_config, "_PRECISION_PROBES", {})
    first = train_config.training_precision(cfg, torch.device("cpu"))
    assert first.dtype == torch.bfloat16 and probes == [1]
    monkeypatch.setattr(train_config, "_PRECISION_PROBES", {})  # as a new process
    again = train_config.training_precision(cfg, torch.device("cpu"))
    assert again.dtype == torch.bfloat16 and probes == [1]
    assert again.reason.startswith(first.reason) and "earlier run on this CPU" in again.reason
    monkeypatch.setattr(train_config, "_PRECISION_PROBES", {})
    monkeypatch.setattr(torch, "__version__", "0.0-other")
    train_config.training_precision(cfg, torch.device("cpu"))
    assert probes == [1, 1]


def test_the_pixel_mean_is_the_float64_mean_exactly(data_dir):
    """pixel_mean sums the uint8 set as integers instead of copying it to float64 (1-2 s of CPU before each run)."""
    from randmask.experiments.data import load_uint8, pixel_mean

    x, _ = load_uint8("cifar10", "train")
    assert torch.equal(pixel_mean("cifar10"), x.double().mean(0).div(255).float())


def test_resume_state_records_the_precision(tmp_path, data_dir):
    cfg = make_config("0.5-Shallow", "quick", epochs=2, **TINY)

    def stop_after_first_epoch(record):
        if record["event"] == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=stop_after_first_epoch, show_bar=False)
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    start = next(r for r in map(json.loads, (tmp_path / "run" / "progress.jsonl").read_text().splitlines())
                 if r["event"] == "start")
    assert state["autocast"] == start["autocast"] and state["autocast"] in ("fp32", "bfloat16")
    assert start["precision_reason"]  # the log says which precision and why
    assert start["openmp_wait"].startswith("OpenMP waits")  # and how idle OpenMP threads wait
    train(cfg, tmp_path / "run", show_bar=False)  # resumed: keeps its precision, and says so
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    again = [r for r in records if r["event"] == "start"][-1]
    assert again["autocast"] == start["autocast"] and "resumed run keeps" in again["precision_reason"]


def test_a_short_epoch_still_logs_its_steps(tmp_path, data_dir):
    """4 steps an epoch, fewer than log_every (20): the app must still see the epoch move (issue 18)."""
    cfg = make_config("0.7-Shallow", "quick", epochs=2, **{**TINY, "log_every": 20})
    train(cfg, tmp_path / "run", show_bar=False)
    events = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["epoch"], e["step"], e["steps"]) for e in steps] == [(1, 1, 4), (1, 2, 4), (1, 3, 4), (1, 4, 4),
                                                                    (2, 1, 4), (2, 2, 4), (2, 3, 4), (2, 4, 4)]
    assert [e["images"] for e in steps[:4]] == [64, 128, 192, 256]
    assert all(e["elapsed_s"] > 0 for e in steps)


def test_the_epoch_check_runs_in_the_training_precision_and_the_stated_accuracy_in_fp32(tmp_path, data_dir,
                                                                                        monkeypatch):
    import randmask.experiments.train as training

    calls = []
    real_accuracy = training.accuracy

    def spy(*args, amp=None, **kwargs):
        calls.append(amp)
        return real_accuracy(*args, amp=amp, **kwargs)

    monkeypatch.setattr(training, "accuracy", spy)
    cfg = make_config("0.5-Shallow", "quick", epochs=2, precision="bf16", **TINY)
    result = train(cfg, tmp_path / "run", show_bar=False)
    assert calls == [torch.bfloat16, torch.bfloat16, None]  # two epoch checks, then the checkpoint's own number
    model, config = load_model(tmp_path / "run")
    x, y = training.load_uint8("cifar10", "test")
    correct, n = real_accuracy(model, x[:TINY["eval_n"]], y[:TINY["eval_n"]])
    assert config["clean_accuracy"] == result["clean_accuracy"] == correct / n
