"""Our Square against torchattacks' Square on one zoo model (issue 34.4): robust images per seed, and which images
only one of them leaves robust. Images are quantised to 8 bits as the report's protocols do.

    python bench/square_vs_torchattacks.py --model assets/zoo/cifar10/0.9-Shallow --n 100 --queries 300 --eps 4
"""
from __future__ import annotations

import argparse
import time

import torch
import torchattacks

from randmask.attacks.square import Square
from randmask.experiments.checkpoint import load_model
from randmask.experiments.data import load_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/zoo/cifar10/0.9-Shallow")
    parser.add_argument("--n", type=int, default=100, help="first N CIFAR-10 test images")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--eps", type=float, default=4, help="in 0-255 units")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["ours", "torchattacks"],
                        choices=["ours", "torchattacks", "torchattacks+edge"],
                        help="torchattacks+edge: torchattacks with windows allowed to start at the last row and "
                             "column, as ours")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine
    model, _ = load_model(args.model)
    x, y = load_tensors("cifar10", "test", n=args.n)
    x, y = x[:args.n], y[:args.n]

    def robust(adv: torch.Tensor) -> set[int]:
        with torch.no_grad():
            return set((model((adv * 255).round() / 255).argmax(1) == y).nonzero().flatten().tolist())

    clean = robust(x)
    print(f"{args.model}, first {args.n} test images, Square{args.eps:g}, {args.queries} queries: "
          f"{len(clean)} correct clean", flush=True)
    found = {}
    for seed in args.seeds:
        attacks = {"ours": Square(model, eps=args.eps, queries=args.queries, seed=seed, exact=True),
                   "torchattacks": torchattacks.Square(model, eps=args.eps / 255, n_queries=args.queries, seed=seed)}
        edge = attacks["torchattacks+edge"] = torchattacks.Square(model, eps=args.eps / 255, n_queries=args.queries,
                                                                  seed=seed)
        # torchattacks draws a window's corner from [0, h - s - 1]; ours from [0, h - s]
        edge.random_int = lambda low=0, high=1, shape=(1,), a=edge: a.__class__.random_int(a, low, high + 1, shape)
        for name in args.variants:
            attack = attacks[name]
            began = time.time()
            found[f"{name} seed {seed}"] = robust(attack(x, y))
            kept = found[f"{name} seed {seed}"]
            print(f"{name} seed {seed}: {len(kept)} robust, {len(kept - clean)} of them wrong clean "
                  f"({time.time() - began:.0f} s)", flush=True)
    names = list(found)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"{a} vs {b}: only {a} {len(found[a] - found[b])}, only {b} {len(found[b] - found[a])}")


if __name__ == "__main__":
    main()
