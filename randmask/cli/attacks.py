"""Attack and evaluation commands of `python -m randmask` (registered by randmask.cli.main via add_subcommands).

    attack     save an adversarial set (PNGs + meta.csv) for the human study
    transfer   black-box transfer, Tables 2 and 7-11 (several --source models are attacked as one ensemble)
    whitebox   Table 4          graybox   Table 5          madry   Table 1          mnist   Table 6
    noise      Figure 3         shuffle   appendix A, Table 3

Models are checkpoint folders or notations; a notation builds an untrained model (for smoke tests) and may
carry seeds, e.g. '0.5-Shallow@seed=1,mask_seed=2'. Each protocol writes a tidy CSV (see randmask.experiments.protocols).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from randmask.cli.attack_io import (
    LoadedModel,
    ProgressBar,
    checked_output,
    load_models,
    models_dataset,
    protocol_options,
    run_protocol,
    test_pool,
)
from randmask.core.errors import RandmaskError, at_least_one

# ------------------------------------------------------------------------------------------ commands
MAX_INDEX_DIGITS = 9


def parse_indices(text: str) -> list[int]:
    """`--indices`: test-set positions, comma-separated ('3,17,42'), each once; their range is checked against
    the test set once it is loaded (check_indices)."""
    tokens = [token.strip() for token in text.split(",")]
    if not text.strip():
        raise RandmaskError("--indices is empty; give test-set positions such as 3,17,42")
    indices, seen = [], set()
    for token in tokens:
        if not token.isascii() or not token.isdigit() or len(token) > MAX_INDEX_DIGITS:
            shown = token if len(token) <= 20 else token[:17] + "..."
            raise RandmaskError(f"--indices: {shown!r} is not a test-set position (a whole number from 0)")
        index = int(token)
        if index in seen:  # its image file would be written twice
            raise RandmaskError(f"--indices: {index} appears twice; each image is attacked once")
        seen.add(index)
        indices.append(index)
    return indices


def check_indices(indices: list[int], size: int, dataset: str, pool: int | None) -> torch.Tensor:
    """The positions as a tensor, each inside the loaded test images (the first --pool of them when given)."""
    outside = [i for i in indices if i >= size]
    if outside:
        where = f"the first {size} test images (--pool)" if pool else f"the {dataset} test set"
        raise RandmaskError(f"--indices: {outside[0]} is outside {where} (0-{size - 1})")
    return torch.tensor(indices, dtype=torch.long)


def choose_images(args: argparse.Namespace, judges: list[LoadedModel], x: torch.Tensor, y: torch.Tensor,
                  dataset: str) -> torch.Tensor:
    """Test-set positions to attack: from --indices in their order (default: the test set's), the first --n that
    every judge (the source and --also-correct) classifies correctly, or the first --n with --all-images. From
    --indices, fewer qualifying images than --n is an error, raised before any attack."""
    from randmask.experiments.evaluate import select_correct

    if args.indices is None:
        n = 100 if args.n is None else args.n
        if args.all_images:
            return torch.arange(min(n, len(x)))
        return select_correct([m.model for m in judges], x, y, n=n, batch_size=args.batch_size)
    pool = check_indices(parse_indices(args.indices), len(x), dataset, args.pool)
    n = len(pool) if args.n is None else args.n
    if n > len(pool):
        raise RandmaskError(f"--n {n} but --indices gives {len(pool)} images")
    if args.all_images:
        return pool[:n]
    picked = pool[select_correct([m.model for m in judges], x[pool], y[pool], n=n, batch_size=args.batch_size)]
    if len(picked) < n:
        names = " and ".join(m.name for m in judges)
        raise RandmaskError(f"only {len(picked)} of the {len(pool)} given images are classified correctly by "
                            f"{names}; {n} were asked for")
    return picked


def cmd_attack(args: argparse.Namespace) -> int:
    from randmask.attacks import parse_attack
    from randmask.core.set_schema import META_FILE
    from randmask.experiments.adversarial_sets import save_adversarial_set
    from randmask.experiments.evaluate import unchanged_note

    spec = parse_attack(args.attack)
    at_least_one("--n", args.n)
    at_least_one("--batch-size", args.batch_size)
    if args.indices is not None:
        parse_indices(args.indices)  # its form, before any model or image is loaded
    if args.all_images and args.also_correct:
        raise RandmaskError("--all-images attacks images whatever any model predicts; --also-correct chooses "
                            "among those classified correctly: give one of them")
    out = checked_output(args, folder=True, kind="an adversarial set (a folder with meta.csv)",
                  replaceable=lambda folder: (folder / META_FILE).is_file())
    (source,) = load_models([args.model], args)  # alone: a judge of the same notation must not rename it
    judges = load_models(args.also_correct, args) if args.also_correct else []
    others = load_models(args.predict, args) if args.predict else []
    datasets = {m.config.get("dataset", "cifar10") for m in (source, *judges, *others)}
    if len(datasets) > 1:  # each list is checked on loading; across them, here
        raise RandmaskError(f"models are for different data sets: {', '.join(sorted(datasets))}")
    dataset = models_dataset(args, [source, *judges, *others])
    x, y = test_pool(args, dataset)
    idx = choose_images(args, [source, *judges], x, y, dataset)
    bar = ProgressBar(args.quiet, str(spec))
    try:
        with out as tmp:
            rows = save_adversarial_set(source.model, str(spec), x[idx], y[idx], idx, tmp,
                                        source_name=source.name, predict_models={m.name: m.model for m in others},
                                        seed=args.seed, save_clean=args.save_clean, batch_size=args.batch_size,
                                        progress=bar)
    finally:
        bar.close()
    fooled = sum(r["fooled"] for r in rows)
    unchanged = sum(r["linf"] == 0 for r in rows)
    note = unchanged_note(str(spec), unchanged, len(rows), source.name)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps({"out": args.out, "images": len(rows), "fooled": fooled, "unchanged": unchanged,
                      "attack": str(spec), "source": source.name}, allow_nan=False))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from randmask.experiments.protocols import paper_transfer_attacks, transfer

    out = checked_output(args, folder=False)
    at_least_one("--n", args.n)
    at_least_one("--n-cw", args.n_cw)
    sources = load_models(args.source, args)
    targets = load_models(args.targets, args)
    dataset = models_dataset(args, sources + targets)
    x, y = test_pool(args, dataset)
    name = " + ".join(s.name for s in sources)
    attacks = args.attack or paper_transfer_attacks(name)
    return run_protocol(args, out, "transfer", lambda bar: transfer(
        [s.model for s in sources], {t.name: t.model for t in targets}, attacks, x, y, source_name=name,
        n=args.n, n_cw=args.n_cw, quantize_images=not args.no_quantize, clean=not args.no_clean,
        dataset=dataset, progress=bar, **protocol_options(args)))


def cmd_madry(args: argparse.Namespace) -> int:
    from randmask.experiments.protocols import madry

    out = checked_output(args, folder=False)
    at_least_one("--n", args.n)
    sources = load_models(args.source, args)
    targets = load_models(args.targets, args)
    dataset = models_dataset(args, sources + targets)
    x, y = test_pool(args, dataset)
    return run_protocol(args, out, "madry", lambda bar: madry(
        [s.model for s in sources], {t.name: t.model for t in targets}, x, y,
        source_name=" + ".join(s.name for s in sources), n=args.n, quantize_images=not args.no_quantize,
        clean=not args.no_clean, dataset=dataset, progress=bar, **protocol_options(args)))


def cmd_mnist(args: argparse.Namespace) -> int:
    from randmask.experiments.protocols import mnist

    out = checked_output(args, folder=False)
    if args.dataset not in (None, "mnist"):
        raise RandmaskError("the MNIST protocol runs on mnist; drop --dataset")
    args.dataset = "mnist"
    at_least_one("--n", args.n)
    sources = load_models(args.source, args)
    targets = load_models(args.targets, args)
    x, y = test_pool(args, "mnist")
    return run_protocol(args, out, "mnist", lambda bar: mnist(
        [s.model for s in sources], {t.name: t.model for t in targets}, x, y,
        source_name=" + ".join(s.name for s in sources), n=args.n, quantize_images=not args.no_quantize,
        clean=not args.no_clean, progress=bar, **protocol_options(args)))


def cmd_whitebox(args: argparse.Namespace) -> int:
    from randmask.experiments.protocols import WHITEBOX_ATTACKS, whitebox

    out = checked_output(args, folder=False)
    models = load_models(args.models, args)
    dataset = models_dataset(args, models)
    x, y = test_pool(args, dataset)
    return run_protocol(args, out, "whitebox", lambda bar: whitebox(
        {m.name: m.model for m in models}, args.attack or list(WHITEBOX_ATTACKS), x, y,
        quantize_images=not args.no_quantize, dataset=dataset, progress=bar, **protocol_options(args)))


def cmd_graybox(args: argparse.Namespace) -> int:
    from randmask.experiments.protocols import graybox, relation

    out = checked_output(args, folder=False)
    at_least_one("--n", args.n)
    sources = load_models(args.sources, args)
    targets = load_models(args.targets, args)
    dataset = models_dataset(args, sources + targets)
    x, y = test_pool(args, dataset)
    relations = {(s.name, t.name): relation(s.config, t.config) for s in sources for t in targets}
    return run_protocol(args, out, "graybox", lambda bar: graybox(
        {s.name: s.model for s in sources}, {t.name: t.model for t in targets}, x, y, attack=args.attack,
        relations=relations, n=args.n, quantize_images=not args.no_quantize, clean=not args.no_clean,
        dataset=dataset, progress=bar, **protocol_options(args)))


def cmd_noise(args: argparse.Namespace) -> int:
    from randmask.experiments.corruptions import noise

    out = checked_output(args, folder=False)
    models = load_models(args.models, args)
    dataset = models_dataset(args, models)
    x, y = test_pool(args, dataset)
    return run_protocol(args, out, "noise", lambda bar: noise(
        {m.name: m.model for m in models}, x, y, sigmas=args.sigmas, quantize_images=not args.no_quantize,
        dataset=dataset, progress=bar, **protocol_options(args)))


def cmd_shuffle(args: argparse.Namespace) -> int:
    from randmask.experiments.corruptions import shuffle

    out = checked_output(args, folder=False)
    at_least_one("--n", args.n)
    if not 0 <= args.min_confidence <= 1:
        raise RandmaskError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    models = load_models(args.models, args)
    dataset = models_dataset(args, models)
    x, y = test_pool(args, dataset)
    return run_protocol(args, out, "shuffle", lambda bar: shuffle(
        {m.name: m.model for m in models}, x, y, ks=args.k, n=args.n, min_confidence=args.min_confidence,
        dataset=dataset, progress=bar, **protocol_options(args)))


# ------------------------------------------------------------------------------------------ parser
def _options(p: argparse.ArgumentParser, *, pool: int | None = None, quantize: bool = True) -> None:
    p.add_argument("--dataset", default=None, help="cifar10, mnist or tinyimagenet10 (default: the models')")
    p.add_argument("--pool", type=int, default=pool,
                   help=f"use the first N test images (default: {pool if pool else 'all'})")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of random starts, noise and shuffles")
    p.add_argument("--width", type=int, default=16, help="base width of models built from a notation")
    p.add_argument("--untrained", action="store_true",
                   help="allow notations instead of checkpoint folders: UNTRAINED models (random weights)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--exact", action="store_true",
                   help="attack and evaluate the models themselves in NCHW, bit-identical to torchattacks "
                        "(default: the fast path, about 1.6x faster on a CPU; RANDMASK_EXACT=1 does the same)")
    if quantize:
        p.add_argument("--no-quantize", action="store_true",
                       help="evaluate float images instead of the uint8 images they would be stored as")


def _csv_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="CSV file (never one of the inputs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _clean(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-clean", action="store_true", help="skip the clean-accuracy rows")


def add_subcommands(sub) -> None:
    """Register the attack and protocol commands on an argparse subparsers object."""
    p = sub.add_parser("attack", help="save an adversarial set (PNGs + meta.csv) for the human study")
    p.add_argument("--model", required=True, help="checkpoint folder or notation (the source)")
    p.add_argument("--attack", required=True, help="e.g. PGD16, 'PGD2,16', CW40")
    p.add_argument("--n", type=int, default=None,
                   help="number of images (default 100; with --indices, as many as it gives)")
    p.add_argument("--out", required=True, help="output folder (gets meta.csv and images/)")
    p.add_argument("--predict", nargs="+", default=[], metavar="M",
                   help="also record these models' predictions (pred:<model> columns)")
    p.add_argument("--indices", default=None, metavar="I,J,...",
                   help="take the images from these test-set positions (comma-separated, each once), in this "
                        "order, instead of from the start of the test set; fewer than --n qualifying is an error")
    p.add_argument("--also-correct", nargs="+", default=[], metavar="M",
                   help="choose only images these models classify correctly too, besides the source (so several "
                        "sets can share their images)")
    p.add_argument("--all-images", action="store_true",
                   help="attack the first N images, not the first N the source classifies correctly")
    p.add_argument("--save-clean", action="store_true", help="also save the original images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set in --out")
    _options(p, quantize=False)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("transfer", help="black-box transfer (Tables 2, 7-11) -> CSV")
    p.add_argument("--source", nargs="+", required=True, metavar="M",
                   help="source model(s); several are attacked as one logit-averaging ensemble")
    p.add_argument("--targets", nargs="+", required=True, metavar="M")
    p.add_argument("--attack", nargs="+", metavar="A",
                   help="attacks (default: the paper's FGSM8 FGSM16 FGSM32 PGD16 PGD2,16 PGD32 CW40/CW20)")
    p.add_argument("--n", type=int, default=5000, help="source-correct images to attack (paper: 5000)")
    p.add_argument("--n-cw", type=int, default=1000, help="images for CW attacks (paper: 1000)")
    _csv_out(p)
    _options(p)
    _clean(p)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("madry", help="Madry et al.'s black-box setting, FGSM8 and PGD2,7,8 (Table 1) -> CSV")
    p.add_argument("--source", nargs="+", required=True, metavar="M", help="naturally trained source(s)")
    p.add_argument("--targets", nargs="+", required=True, metavar="M")
    p.add_argument("--n", type=int, default=5000)
    _csv_out(p)
    _options(p)
    _clean(p)
    p.set_defaults(func=cmd_madry)

    p = sub.add_parser("mnist", help="MNIST transfer, PGD 40 x 0.01 eps 0.3 (Table 6) -> CSV")
    p.add_argument("--source", nargs="+", required=True, metavar="M", help="paper: DenseNet-121")
    p.add_argument("--targets", nargs="+", required=True, metavar="M")
    p.add_argument("--n", type=int, default=5000)
    _csv_out(p)
    _options(p)
    _clean(p)
    p.set_defaults(func=cmd_mnist)

    p = sub.add_parser("whitebox", help="white-box accuracy (Table 4) -> CSV")
    p.add_argument("--models", nargs="+", required=True, metavar="M")
    p.add_argument("--attack", nargs="+", metavar="A",
                   help="default: Table 4's FGSM1 FGSM2 FGSM4 PGD1,4,2 PGD1,6,4 PGD1,10,8")
    _csv_out(p)
    _options(p, pool=1000)
    p.set_defaults(func=cmd_whitebox)

    p = sub.add_parser("graybox", help="gray-box transfer: other init, DIF, other architectures (Table 5) -> CSV")
    p.add_argument("--sources", nargs="+", required=True, metavar="M")
    p.add_argument("--targets", nargs="+", required=True, metavar="M")
    p.add_argument("--attack", default="FGSM16")
    p.add_argument("--n", type=int, default=5000)
    _csv_out(p)
    _options(p)
    _clean(p)
    p.set_defaults(func=cmd_graybox)

    p = sub.add_parser("noise", help="accuracy under clipped Gaussian noise (Figure 3) -> CSV")
    p.add_argument("--models", nargs="+", required=True, metavar="M")
    p.add_argument("--sigmas", nargs="+", type=float, default=[1, 2, 4, 8, 12, 16, 20, 24, 28, 32],
                   help="noise sigmas in 0-255 units (default: the paper's)")
    _csv_out(p)
    _options(p, pool=1000)
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("shuffle", help="accuracy on patch-shuffled confident images (Table 3) -> CSV")
    p.add_argument("--models", nargs="+", required=True, metavar="M")
    p.add_argument("--k", nargs="+", type=int, default=[2, 4, 8], help="k×k patch grids (default 2 4 8)")
    p.add_argument("--n", type=int, default=5000, help="images (paper: 5000)")
    p.add_argument("--min-confidence", type=float, default=0.99)
    _csv_out(p)
    _options(p, quantize=False)
    p.set_defaults(func=cmd_shuffle)
