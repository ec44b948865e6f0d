"""Model-core benchmark: the quick preset's training epoch as `train` runs it, old path against new, and masked
vs unmasked step times.

    python bench/bench_core.py [--model 0.7-Shallow] [--steps 50] [--chunk 10] [--eval-n 2000] [--threads 2]
                               [--rounds 7] [--width 16] [--batch 128] [--only preset|masks] [--device auto]

--device: cpu, cuda, or auto (CUDA when present). On CUDA every timing waits for the GPU to finish; both paths
pick the same precision there (the changes of issue 17 are CPU ones), so the figures that matter are the
absolute step and epoch times.

preset: the quick preset for --model built and stepped by `randmask.experiments.train` itself (`model_and_optimizer`,
`epoch_batches`, `train_step`, `lr_at`, `accuracy`) on the real CIFAR-10 training set, twice from the same
seed: the new path (precision from `training_precision`, which measures bf16 against fp32 here; masks cast in
the activation's layout; BatchNorm, mask, residual addition and ReLU in the fused CPU kernels of
`randmask.core.fused`; crop and flip as one gather on uint8 images; the end-of-epoch test pass in the training
precision, in 128-image batches on a CPU) and the old path (precision from oneDNN's report alone; masks in
their own layout; eager BatchNorm, mask and ReLU; crop and flip by advanced indexing on float images; the test
pass in fp32, 500-image batches). The
two run interleaved, --chunk steps at a time, for --steps steps each; printed: each part's median time per step
(data, forward+backward+update), the end-of-epoch test pass per 10,000 images, the estimated epoch time of
each path and their ratio (target new/old <= 0.67), the same ratio chunk by chunk (median and range: the host's
speed drifts from minute to minute, and a chunk is timed beside its neighbour of the other path), and how far
apart the two loss curves are (within bf16 tolerance, <= 2% relative: the fused kernels sum in another order than
eager PyTorch).
masks: masked vs unmasked fp32 step times, interleaved; targets masked/unmasked <= 1.10 training, <= 1.05
inference.
omp: how idle OpenMP threads wait, side by side: one fresh process per policy (the runtime reads it when torch
loads) times the forward and backward pass of a --model training step (--width, --batch, --threads, fp32, random
images) on the machine as it is, then with --busy extra busy processes beside it (a load spike), in --rounds
interleaved blocks of --omp-steps steps. Policies: ACTIVE (spin forever), PASSIVE (sleep at once), libgomp's
default (neither set: 300,000 spin rounds), randmask's bounded spin (settings.OPENMP_BOUNDED_SPIN) and
GOMP_SPINCOUNT=--spins for comparison. Printed: median wall and process CPU time per step, each policy's
loaded/as-is ratio and its ratio to randmask's choice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from randmask.core.device import autocast_dtype, cpu_has_fast_bf16, cpu_model, default_device, synchronize
from randmask.core.fused import library as fused_library
from randmask.core.masks import RandomMask
from randmask.core.models import build_model
from randmask.core.settings import OPENMP_BOUNDED_SPIN, OPENMP_WAIT_VARIABLES, fused_kernels_enabled
from randmask.experiments.data import load_uint8
from randmask.experiments.train import (
    EPOCH_CHECK_BATCH,
    accuracy,
    epoch_batches,
    lr_at,
    model_and_optimizer,
    train_step,
    where_batches_are_drawn,
)
from randmask.experiments.train_config import make_config, training_precision


def old_random_crop_flip(x, shifts, flips, pad=4, flip=True):
    """random_crop_flip as it was before issue 17: 4-way advanced indexing (the same values, slower)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 0, None] + torch.arange(h))[:, None, :, None]
    cols = (shifts[:, 1, None] + torch.arange(w))[:, None, None, :]
    if flip:
        cols = torch.where(flips[:, None, None, None], cols.flip(-1), cols)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def old_epoch_batches(x, y, cfg, epoch):
    """epoch_batches as it was before issue 17 (crop and flip on float images): the same batches, slower."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(x), generator=gen)
    flips = torch.rand(len(order), generator=gen) < 0.5
    shifts = torch.randint(0, 9, (len(order), 2), generator=gen)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        xb = x[idx].float().div_(255)
        if cfg.augment:
            xb = old_random_crop_flip(xb, shifts[start:start + cfg.batch_size], flips[start:start + cfg.batch_size],
                                      flip=cfg.dataset != "mnist")
        yield xb, y[idx]


@contextlib.contextmanager
def eager_batchnorm(on: bool):
    """The old path ran BatchNorm, mask and ReLU eagerly: RANDMASK_FUSED=0 for its steps."""
    if not on:
        yield
        return
    before = os.environ.get("RANDMASK_FUSED")
    os.environ["RANDMASK_FUSED"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RANDMASK_FUSED"]
        else:
            os.environ["RANDMASK_FUSED"] = before


def clock(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def compare_preset(args) -> None:
    device = args.device
    cfg = make_config(args.model, "quick")
    x, y = load_uint8(cfg.dataset, "train")
    x_test, y_test = load_uint8(cfg.dataset, "test")
    x_test, y_test = x_test[:args.eval_n], y_test[:args.eval_n]
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    start = time.perf_counter()
    new_amp = training_precision(cfg, device).dtype
    probe_s = time.perf_counter() - start
    old_amp = autocast_dtype(device, cfg.precision)
    paths = {}
    for name, amp in (("old", old_amp), ("new", new_amp)):
        model, opt = model_and_optimizer(cfg, device)
        if name == "old":
            for m in model.modules():
                if isinstance(m, RandomMask):
                    m.match_layout = False
        if name == "old":
            batches = old_epoch_batches(x, y, cfg, 0)
        else:  # as train draws them: on a GPU from the training set held on the GPU
            batches = epoch_batches(*where_batches_are_drawn(x, y, device), cfg, 0)
        eval_amp = amp if name == "new" else None  # the old path checked each epoch in fp32
        paths[name] = {"model": model, "opt": opt, "amp": amp, "eval_amp": eval_amp, "batches": batches, "losses": [],
                       "data": [], "step": [], "eval": [], "chunk_epochs": []}
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_model()}; {torch.get_num_threads()} threads, oneDNN native bf16: {cpu_has_fast_bf16()}")
    print(f"{cfg.notation}, quick preset (width {cfg.width}, batch {cfg.batch_size}, channels_last "
          f"{cfg.channels_last}, {steps_per_epoch} steps per epoch) on {device.type}: {where}, "
          f"torch {torch.__version__}")
    print(f"precision: old path {old_amp or 'fp32'} (oneDNN's report), new path {new_amp or 'fp32'} "
          f"(measured probe, {probe_s:.1f}s once per process and model shape)")
    kernels = "on" if fused_library() is not None and fused_kernels_enabled() else "off: eager in both paths"
    print(f"fused BatchNorm + mask + ReLU kernels (new path, channels divisible by 16, CPU): {kernels}")
    done = 0
    while done < args.steps:
        chunk = min(args.chunk, args.steps - done)
        for name in (("old", "new") if (done // args.chunk) % 2 == 0 else ("new", "old")):
            p = paths[name]
            p["model"].train()
            for i in range(done, done + chunk):
                t0 = clock(device)
                xb, yb = next(p["batches"])
                t1 = clock(device)
                with eager_batchnorm(name == "old"):
                    loss, _ = train_step(p["model"], p["opt"], xb, yb, cfg, p["amp"],
                                         lr_at(cfg, i, steps_per_epoch), device)
                t2 = clock(device)
                p["losses"].append(loss)
                if i:  # the first step builds oneDNN's kernels
                    p["data"].append(t1 - t0)
                    p["step"].append(t2 - t1)
            t0 = clock(device)
            check_batch = EPOCH_CHECK_BATCH if name == "new" and device.type == "cpu" else 500  # as train checks
            accuracy(p["model"], x_test, y_test, device=device, channels_last=cfg.channels_last, amp=p["eval_amp"],
                     batch_size=check_batch)
            p["eval"].append((clock(device) - t0) * 10000 / len(x_test))
            timed = chunk - (done == 0)  # this chunk's timed steps (the very first step is not timed)
            if timed:
                data, step = statistics.median(p["data"][-timed:]), statistics.median(p["step"][-timed:])
                p["chunk_epochs"].append(steps_per_epoch * (data + step) + p["eval"][-1])
        done += chunk
    epoch = {}
    for name, p in paths.items():
        data, step, ev = (statistics.median(p[k]) for k in ("data", "step", "eval"))
        epoch[name] = steps_per_epoch * (data + step) + ev
        print(f"  {name}: data {1000 * data:.1f} ms/step, forward+backward+update {1000 * step:.1f} ms/step, "
              f"test pass {ev:.1f}s per 10,000 images; epoch ~ {epoch[name]:.1f}s")
    ratio = epoch["new"] / epoch["old"]
    print(f"quick preset epoch-time ratio new/old = {ratio:.3f} (target <= 0.67: {'met' if ratio <= 0.67 else 'MISSED'}),"
          f" medians over {args.steps - 1} interleaved steps each")
    # the host's speed drifts over minutes: each chunk beside its neighbour of the other path shows the spread
    pairs = sorted(n / o for n, o in zip(paths["new"]["chunk_epochs"], paths["old"]["chunk_epochs"], strict=True))
    if pairs:
        print(f"  chunk by chunk (each path's {args.chunk} steps and test pass beside the other's): new/old median "
              f"{statistics.median(pairs):.3f}, range {pairs[0]:.3f}-{pairs[-1]:.3f} over {len(pairs)} chunks")
    old, new = torch.tensor(paths["old"]["losses"]), torch.tensor(paths["new"]["losses"])
    rel = ((new - old).abs() / old.abs()).max().item()
    same = "identical" if torch.equal(old, new) else f"max relative difference {rel:.4f}"
    print(f"loss curves over the first {args.steps} steps (same seed): {same} "
          f"(bf16 tolerance <= 0.02: {'met' if rel <= 0.02 else 'MISSED'}); "
          f"first {old[0]:.4f}/{new[0]:.4f}, last {old[-1]:.4f}/{new[-1]:.4f} (old/new)")


def compare_masks(args) -> None:
    device = args.device
    x, y = torch.rand(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device)
    variants = {}
    for name in ("Normal ResNet-18", "0.7-Shallow", "0.5-Deep", "0.5-ShallowSM"):
        model = build_model(name, width=args.width).to(device)
        variants[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (model, opt) in variants.items():
            model.train()
            start = clock(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t_train = clock(device) - start
            model.eval()
            start = clock(device)
            with torch.no_grad():
                model(x)
            t_eval = clock(device) - start
            if r:
                times.setdefault((name, "train"), []).append(t_train)
                times.setdefault((name, "eval"), []).append(t_eval)
    med = {k: statistics.median(v) for k, v in times.items()}
    base_train, base_eval = med[("Normal ResNet-18", "train")], med[("Normal ResNet-18", "eval")]
    print(f"masked vs unmasked, fp32 NCHW on {device.type}, width {args.width}, batch {args.batch}, "
          f"{args.rounds} interleaved rounds")
    print(f"{'model':<18}{'train step s':>14}{'ratio':>8}{'inference s':>14}{'ratio':>8}")
    for name in variants:
        tr, ev = med[(name, "train")], med[(name, "eval")]
        print(f"{name:<18}{tr:>14.4f}{tr / base_train:>8.3f}{ev:>14.4f}{ev / base_eval:>8.3f}")


BUSY_LOOP = "import time\nwhile True: time.perf_counter()"  # a process that takes all the CPU it is given
OMP_BLOCK_LIMIT_S = 120.0  # a block stops after this much wall time (endless spinning under load: seconds a step)


def omp_child(args) -> None:
    """One policy, in this fresh process: blocks of steps, alternately as the machine is and beside --busy busy
    processes; one JSON line of per-block medians."""
    model = build_model(args.model, width=args.width).train()
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()

    step()  # oneDNN builds its kernels on first use
    blocks = []
    for r in range(2 * args.rounds):
        loaded = r % 2 == 1
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy if loaded else 0)]
        try:
            time.sleep(0.2 if busy else 0)  # the busy processes are running before the first step
            walls, cpus, began = [], [], time.perf_counter()
            for _ in range(args.omp_steps):
                w, c = time.perf_counter(), time.process_time()
                step()
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
                if time.perf_counter() - began > OMP_BLOCK_LIMIT_S:
                    break
        finally:
            for b in busy:
                b.kill()
                b.wait()
        blocks.append({"loaded": loaded, "wall": walls, "cpu": cpus})
    print(json.dumps({"blocks": blocks, "threads": torch.get_num_threads()}))


def compare_omp(args) -> None:
    spin = ", ".join(f"{k}={v}" for k, v in OPENMP_BOUNDED_SPIN.items())
    policies = {"ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
                "libgomp default": {}, f"ours ({spin})": dict(OPENMP_BOUNDED_SPIN)}
    for n in args.spins:
        policies.setdefault(f"GOMP_SPINCOUNT={n}", {"GOMP_SPINCOUNT": str(n)})
    base = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
    base.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"OpenMP wait policies: {args.model} width {args.width}, batch {args.batch}, fp32 forward+backward, "
          f"{args.threads} threads; {cpu_model()}; torch {torch.__version__}; load average at start "
          f"{os.getloadavg()[0]:.1f}; 'loaded' = beside {args.busy} extra busy processes; {args.rounds} interleaved "
          f"blocks of {args.omp_steps} steps each way, one fresh process per policy")
    results = {}
    for name, extra in policies.items():
        command = [sys.executable, os.path.abspath(__file__), "--omp-child", "--model", args.model,
                   "--width", str(args.width), "--batch", str(args.batch), "--rounds", str(args.rounds),
                   "--omp-steps", str(args.omp_steps), "--busy", str(args.busy), "--threads", str(args.threads)]
        run = subprocess.run(command, env={**base, **extra}, capture_output=True, text=True, timeout=3600)
        if run.returncode:
            raise SystemExit(f"{name}: the timing process failed: {run.stderr.strip().splitlines()[-1:]}")
        blocks = json.loads(run.stdout.strip().splitlines()[-1])["blocks"]
        results[name] = {way: {k: statistics.median(v for b in blocks if b["loaded"] == loaded for v in b[k])
                               for k in ("wall", "cpu")} for way, loaded in (("as is", False), ("loaded", True))}
    ours = results[f"ours ({spin})"]
    print(f"{'policy':<44}{'as is ms':>10}{'cpu ms':>8}{'loaded ms':>11}{'cpu ms':>8}{'loaded/as is':>13}"
          f"{'vs ours as is':>14}{'vs ours loaded':>15}")
    for name, r in results.items():
        a, b = r["as is"], r["loaded"]
        print(f"{name:<44}{1e3 * a['wall']:>10.0f}{1e3 * a['cpu']:>8.0f}{1e3 * b['wall']:>11.0f}{1e3 * b['cpu']:>8.0f}"
              f"{b['wall'] / a['wall']:>13.2f}{a['wall'] / ours['as is']['wall']:>14.2f}"
              f"{b['wall'] / ours['loaded']['wall']:>15.2f}")
    print(f"load average at end {os.getloadavg()[0]:.1f} (wall times include every other process on the machine; "
          f"compare within this run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="0.7-Shallow")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--eval-n", type=int, default=2000, help="test images timed per chunk (scaled to 10,000)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["preset", "masks", "omp"])
    parser.add_argument("--omp-steps", type=int, default=5, help="omp: timed steps per block")
    parser.add_argument("--busy", type=int, default=2, help="omp: busy processes beside the loaded blocks")
    parser.add_argument("--spins", type=lambda v: [int(n) for n in v.split(",") if n], default=[100000],
                        help="omp: further GOMP_SPINCOUNT values to compare, comma-separated")
    parser.add_argument("--omp-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    args = parser.parse_args()
    args.device = default_device() if args.device == "auto" else torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    if args.omp_child:
        omp_child(args)
        return
    if args.only == "omp":
        compare_omp(args)
        return
    if args.only in (None, "preset"):
        compare_preset(args)
    if args.only in (None, "masks"):
        compare_masks(args)


if __name__ == "__main__":
    main()
