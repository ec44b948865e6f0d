"""Model-core benchmark: masked vs unmasked step times, the quick preset's precision and memory-layout choices.

    python bench/bench_core.py [--width 16] [--batch 128] [--rounds 7] [--threads 2]

Variants run interleaved, round by round, so machine noise hits them alike; medians are compared.
Targets: masked/unmasked training step <= 1.10, inference <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from randmask.device import autocast_dtype, cpu_has_fast_bf16
from randmask.models import build_model


def train_step(model, opt, x, y, amp):
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

    variants = {}
    for name in ("Normal ResNet-18", "0.7-Shallow", "0.5-Deep", "0.5-ShallowSM"):
        model = build_model(name, width=args.width)
        variants[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    nhwc = build_model("Normal ResNet-18", width=args.width).to(memory_format=torch.channels_last)
    nhwc_opt, x_nhwc = torch.optim.SGD(nhwc.parameters(), lr=0.01, momentum=0.9), x.contiguous(
        memory_format=torch.channels_last)
    fast_bf16 = cpu_has_fast_bf16()
    quick_amp = autocast_dtype(torch.device("cpu"), "auto")

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (model, opt) in variants.items():
            model.train()
            t_train = timed(lambda m=model, o=opt: train_step(m, o, x, y, None))
            model.eval()
            with torch.no_grad():
                t_eval = timed(lambda m=model: m(x))
            if r:
                times.setdefault((name, "train"), []).append(t_train)
                times.setdefault((name, "eval"), []).append(t_eval)
        nhwc.train()
        t_nhwc = timed(lambda: train_step(nhwc, nhwc_opt, x_nhwc, y, None))
        if r:
            times.setdefault(("Normal ResNet-18", "train-channels_last"), []).append(t_nhwc)
        model, opt = variants["Normal ResNet-18"]
        model.train()
        t_bf16 = timed(lambda m=model, o=opt: train_step(m, o, x, y, torch.bfloat16)) if r < 3 else None
        if r and t_bf16 is not None:
            times.setdefault(("Normal ResNet-18", "train-bf16"), []).append(t_bf16)

    med = {k: statistics.median(v) for k, v in times.items()}
    base_train, base_eval = med[("Normal ResNet-18", "train")], med[("Normal ResNet-18", "eval")]
    print(f"width {args.width}, batch {args.batch}, {args.threads} threads, {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}, native bf16: {fast_bf16}")
    print(f"{'model':<18}{'train step s':>14}{'ratio':>8}{'inference s':>14}{'ratio':>8}")
    for name in variants:
        tr, ev = med[(name, "train")], med[(name, "eval")]
        print(f"{name:<18}{tr:>14.4f}{tr / base_train:>8.3f}{ev:>14.4f}{ev / base_eval:>8.3f}")
    bf16 = med[("Normal ResNet-18", "train-bf16")]
    print(f"quick preset precision here: {quick_amp or 'fp32'}; its throughput vs plain fp32 eager: "
          f"{base_train / (bf16 if quick_amp else base_train):.2f}x")
    print(f"channels_last vs NCHW fp32 training step: {base_train / med[('Normal ResNet-18', 'train-channels_last')]:.2f}x"
          " throughput (the quick preset trains channels_last)")
    print(f"bf16 autocast vs fp32 training step: {base_train / bf16:.2f}x throughput "
          f"({'native' if fast_bf16 else 'emulated'} bf16)")


if __name__ == "__main__":
    main()
