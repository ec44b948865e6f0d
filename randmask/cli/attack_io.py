"""What the attack and protocol commands share: their models (checkpoint folders or notations, with seeds and
width) and test images from the command line, the device, a progress bar, the checked --out, and the CSV a
protocol writes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from randmask.core.errors import RandmaskError, at_least_one
from randmask.core.notation import DEFAULT_WIDTH, ModelRef, parse_ref
from randmask.core.safe_files import Output, existing_paths


@dataclass
class LoadedModel:
    name: str
    ref: str
    model: nn.Module
    config: dict


def split_ref(text: str) -> tuple[str, ModelRef]:
    """A checkpoint folder or notation as given, or a model reference with seeds or width ('0.5-Shallow@s1m2',
    '0.5-Shallow@w32', or '0.5-Shallow@seed=1,mask_seed=2,width=32') split into its notation and reference."""
    if "@" not in text:
        return text, ModelRef("")
    ref = parse_ref(text)
    return ref.notation, ref


def load_models(refs: list[str], args: argparse.Namespace) -> list[LoadedModel]:
    """Checkpoint folders or notations -> models on the chosen device, all for one data set."""
    from randmask.experiments.checkpoint import load_any

    device = chosen_device(args)
    loaded = []
    for ref in refs:
        target, seeds = split_ref(ref)
        width = seeds.width if seeds.width != DEFAULT_WIDTH else args.width  # '@w32' names the width itself
        build = {"width": width, "seed": seeds.seed, "mask_seed": seeds.mask_seed, "dataset": args.dataset or "cifar10"}
        model, config = load_any(target, device, untrained=args.untrained, **build)
        if config.get("trained") is False:
            print(f"warning: {ref!r} is a notation, not a checkpoint folder: using an UNTRAINED model",
                  file=sys.stderr)
        loaded.append(LoadedModel(config["notation"], ref, model, dict(config)))
    datasets = {m.config.get("dataset", "cifar10") for m in loaded}
    if len(datasets) > 1:
        raise RandmaskError(f"models are for different data sets: {', '.join(sorted(datasets))}")
    if args.dataset and datasets and args.dataset not in datasets:
        raise RandmaskError(f"--dataset {args.dataset} but the models are for {datasets.pop()}")
    counts: dict[str, int] = {}
    for m in loaded:
        counts[m.name] = counts.get(m.name, 0) + 1
    for m in loaded:  # two checkpoints of one notation (other init, DIF) keep their folder in the name
        if counts[m.name] > 1:
            m.name = f"{m.name} ({m.ref})"
    if len({m.name for m in loaded}) < len(loaded):
        raise RandmaskError("the same model is given twice")
    return loaded


def chosen_device(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        from randmask.core.device import default_device

        return default_device()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RandmaskError("--device cuda but CUDA is not available")
    return torch.device(args.device)


def models_dataset(args: argparse.Namespace, models: list[LoadedModel]) -> str:
    return args.dataset or (models[0].config.get("dataset") if models else None) or "cifar10"


def test_pool(args: argparse.Namespace, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    from randmask.experiments.data import load_tensors

    at_least_one("--pool", args.pool)
    return load_tensors(dataset, "test", n=args.pool)


class ProgressBar:
    """A tqdm bar driven by protocol progress callbacks (done, total)."""

    def __init__(self, quiet: bool, desc: str) -> None:
        self.quiet, self.desc, self.bar = quiet, desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="img", file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def checked_output(args: argparse.Namespace, **kwargs) -> Output:
    """The command's --out, checked before any work: every other path on the command line (the models, sets)
    and the data folder are inputs it must keep away from."""
    from randmask.core.settings import data_root

    inputs = existing_paths(v for k, v in vars(args).items() if k != "out") + [data_root()]
    return Output(args.out, overwrite=args.overwrite, inputs=inputs, **kwargs)


def run_protocol(args: argparse.Namespace, out: Output, desc: str, work: Callable[[Callable], list[dict]]) -> int:
    from randmask.experiments.evaluate import csv_text
    from randmask.experiments.protocols import COLUMNS

    bar = ProgressBar(args.quiet, desc)
    try:
        rows = work(bar)
    finally:
        bar.close()
    with out as tmp:
        tmp.write_text(csv_text(rows, COLUMNS), encoding="utf-8", newline="")
    path = out.path
    for row in rows:
        label = " ".join(str(row[k]) for k in ("source", "target", "attack") if row.get(k) not in ("", None))
        print(f"{row['metric']:>15}  {label}: {row['accuracy']:.4f} "
              f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}] n={row['n']}")
    print(json.dumps({"out": str(path), "rows": len(rows)}, allow_nan=False))
    return 0


def protocol_options(args: argparse.Namespace) -> dict:
    at_least_one("--batch-size", args.batch_size)
    return {"seed": args.seed, "batch_size": args.batch_size}
