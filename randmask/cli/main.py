"""`python -m randmask COMMAND`: models, info, train, evaluate, ensemble (+ attack commands when present).

User errors print one line (`error: ...`) and exit 2; they never show a traceback."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from randmask.core.errors import RandmaskError, at_least_one
from randmask.core.settings import apply_openmp_wait_policy

EXIT_USER_ERROR = 2


def cmd_models(args: argparse.Namespace) -> int:
    from randmask.core.architectures import ARCHITECTURES, list_models
    from randmask.core.datasets import DATASETS
    from randmask.experiments.train_config import PRESETS

    print_json({"architectures": {k: ARCHITECTURES[k].name for k in list_models()},
                "datasets": {k: list(v) for k, v in DATASETS.items()},
                "presets": {k: {**v, "milestones": list(v.get("milestones", ()))} for k, v in PRESETS.items()}},
               indent=2)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from randmask.core.models import describe

    print_json(describe(args.notation, dataset=args.dataset, width=args.width, mask_seed=args.mask_seed), indent=2)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from randmask.experiments.train import train
    from randmask.experiments.train_config import make_config

    cfg = make_config(args.notation, args.preset, dataset=args.dataset, width=args.width, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, mask_seed=args.mask_seed,
                      precision=args.precision, train_n=args.train_n, eval_n=args.eval_n)
    at_least_one("--threads", args.threads)
    with _training_folder(Path(args.out)):
        if args.ray is None:
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            result = train(cfg, args.out, show_bar=not args.no_bar)
        else:
            from randmask.views.jobs import train_on_ray

            result = train_on_ray(cfg, Path(args.out), args.ray, args.threads,
                                  say=lambda line: print(line, file=sys.stderr, flush=True))
    if result:
        print_json({"checkpoint": args.out, "clean_accuracy": result["clean_accuracy"],
                    "n": result["clean_accuracy_n"], "train_time_s": result["train_time_s"]})
    return 0


@contextlib.contextmanager
def _training_folder(out: Path) -> Iterator[None]:
    """Training writes into --out as it goes (resume.pt each epoch), so it is not renamed into place. A folder
    with resume.pt (or an EN's members/) is resumed; any other must be new or hold none of the files training
    writes (the app's job folder holds its job.json). When training fails before its first checkpoint, what it
    made is removed again: the folder and its parents if new, else the files it added. A cancelled run keeps its
    log."""
    from randmask.core.safe_files import check_output
    from randmask.core.settings import data_root
    from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from randmask.experiments.resume import RESUME_FILE
    from randmask.experiments.train import LOG_FILE

    resumable = os.path.lexists(out / RESUME_FILE) or (out / "members").is_dir()  # its damage is train's to word
    if not resumable:
        check_output(out, folder=True, overwrite=True, inputs=[data_root()])  # links, files, FIFOs, inputs
        clash = [name for name in (WEIGHTS_FILE, CONFIG_FILE, LOG_FILE) if os.path.lexists(out / name)]
        if clash:
            raise RandmaskError(f"{out} already holds {clash[0]}; choose another --out (training never overwrites)")
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]
    before = set(os.listdir(out)) if not made else set()
    try:
        yield
    except Exception:  # not on a cancel (Ctrl-C, SIGTERM): its progress.jsonl says where the run stopped
        if not resumable and not (out / RESUME_FILE).exists() and not (out / "members").exists():
            import shutil

            for child in (out.iterdir() if out.is_dir() else []):
                if child.name not in before:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
            for folder in made:  # innermost first, only while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def cmd_evaluate(args: argparse.Namespace) -> int:
    from randmask.core.device import default_device
    from randmask.core.stats import wilson_interval
    from randmask.experiments.checkpoint import load_any
    from randmask.experiments.data import load_uint8
    from randmask.experiments.evaluate import predict, top2_logit_gaps

    at_least_one("--n", args.n)
    model, config = load_any(args.model, default_device(), untrained=args.untrained)
    trained = config.get("trained", True)
    if not trained:
        print(f"warning: {config['notation']} is built from the notation: an UNTRAINED model with random weights",
              file=sys.stderr)
    x, y = load_uint8(config["dataset"], "test")
    if args.n is not None:
        x, y = x[:args.n], y[:args.n]
    logits = predict(model, x.float().div(255))
    finite = torch_isfinite_rows(logits)
    if finite < len(y):
        raise RandmaskError(f"{config['notation']} gives NaN or infinite logits on {len(y) - finite} of {len(y)} "
                            f"images: its weights overflow")
    correct, n = int((logits.argmax(1) == y).sum()), len(y)
    low, high = wilson_interval(correct, n)
    gaps = top2_logit_gaps(logits)  # CW's confidence kappa must exceed this margin (README, "Model zoo")
    print_json({"model": config["notation"], "trained": trained, "n": n, "accuracy": correct / n, "ci_low": low,
                "ci_high": high, "logit_gap_median": round(gaps.median().item(), 2),
                "logit_gap_max": round(gaps.max().item(), 2)})
    return 0


def torch_isfinite_rows(logits) -> int:
    """How many rows of a logits tensor are entirely finite."""
    import torch

    return int(torch.isfinite(logits).all(dim=1).sum())


def print_json(value: object, **kwargs) -> None:
    """Print strict JSON: a NaN or infinity is an error here, never an invalid `NaN` token in the output."""
    print(json.dumps(value, allow_nan=False, **kwargs))


def cmd_ensemble(args: argparse.Namespace) -> int:
    from randmask.core.safe_files import Output, existing_paths
    from randmask.core.settings import data_root
    from randmask.experiments.checkpoint import CONFIG_FILE
    from randmask.experiments.train import assemble_ensemble

    out = Output(args.out, folder=True, overwrite=args.overwrite, inputs=[*existing_paths(args.members), data_root()],
                 kind="a checkpoint folder", replaceable=lambda folder: (folder / CONFIG_FILE).is_file())
    with out as tmp:
        result = assemble_ensemble(args.members, tmp, eval_n=args.eval_n)
    print_json({"checkpoint": args.out, "clean_accuracy": result["clean_accuracy"], "n": result["clean_accuracy_n"]})
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from randmask.results import zoo

    if args.action == "list":
        print_json(zoo.list_zoo(), indent=2)
    elif args.action == "table":
        from randmask.results import zoo_table
        from randmask.results.paper import load_paper_tables

        text = "\n".join(zoo_table.zoo_markdown(paper=load_paper_tables()))
        if args.update_readme:
            print(f"updated {zoo_table.update_readme(text)}")
        else:
            print(text)
    elif args.action == "train":
        from randmask.results import zoo_train

        at_least_one("--threads", args.threads)
        if args.threads and args.ray is None:
            import torch

            torch.set_num_threads(args.threads)  # two 1-thread lanes beat one 2-thread job on 2 cores (1.27x)
        if args.preset == "paper":  # kept apart from the shipped quick zoo: ~22 MB a model in fp16
            from randmask.core.settings import zoo_runs_root

            root = zoo_runs_root().parent / "zoo-paper"
            zoo_train.train_zoo(root / "runs", root / "zoo", only=args.only, ray=args.ray, threads=args.threads,
                          plan=zoo.paper_plan(), configure=zoo.paper_config)
        else:
            zoo_train.train_zoo(only=args.only, ray=args.ray, threads=args.threads)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from randmask.results.reproduce import reproduce

    bars: dict = {}

    def progress(key: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = bars.setdefault(key, tqdm(total=total, desc=key, leave=False))
        bar.n = done
        bar.refresh()

    import time

    from randmask.core.settings import crafted_cache_root

    folder = None if args.no_cache else args.cache or crafted_cache_root()
    before = _crafted_sets(folder)
    began = time.perf_counter()
    status = reproduce(args.preset, only=args.only, progress=None if args.no_bar else progress,
                       cache=folder or False, jobs=args.jobs, ray=args.ray,
                       say=lambda line: print(line, file=sys.stderr, flush=True))
    for bar in bars.values():
        bar.close()
    print_json(status, indent=2)
    # cold (nothing cached) against warm (every set reused) is the figure README's Performance section records
    if folder is None:
        cached = "no crafted-set cache"
    else:
        made = len(_crafted_sets(folder) - before)
        if not made:
            kind = "warm" if before else "no attacks"
        else:
            kind = "partly cached" if before else "cold"
        cached = f"{kind}: {len(before)} crafted set(s) in {folder} before, {made} crafted this run"
    print(f"reproduce --preset {args.preset}: total wall time {time.perf_counter() - began:.1f} s ({cached})",
          file=sys.stderr)
    return 0


def _crafted_sets(folder: Path | None) -> set[str]:
    return {p.name for p in folder.glob("*.safetensors")} if folder is not None and folder.is_dir() else set()


def _prog() -> str:
    """How the user ran us, for usage lines: `python -m randmask` or the installed `randmask` script."""
    name = Path(sys.argv[0]).name
    return "python -m randmask" if name in ("__main__.py", "-m", "") else name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list architectures, data sets and training presets")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="describe a model notation (masked layers with measured drop ratios)")
    p.add_argument("notation", help="e.g. '0.7-Shallow', '0.5-ShallowDC', 'Normal ResNet-18'")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--mask-seed", type=int, default=0)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model into a checkpoint folder (resumes if interrupted)")
    p.add_argument("notation")
    p.add_argument("--out", required=True, help="checkpoint folder (new, or one to resume)")
    p.add_argument("--preset", default="quick", help="quick (CPU) or paper (appendix D)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--width", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--mask-seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--train-n", type=int, help="use only the first N training images")
    p.add_argument("--eval-n", type=int, help="measure accuracy on the first N test images")
    p.add_argument("--no-bar", action="store_true", help="no tqdm bar (the JSON-lines log is always written)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; with --ray, the CPUs the "
                   "task asks for on a cluster without GPUs, default 1)")
    _ray_option(p, "train as one task on a Ray cluster (one GPU where it has GPUs); --out must be a folder every "
                   "node sees at the same path")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="clean test accuracy of a checkpoint (last line: JSON)")
    p.add_argument("--model", required=True, help="checkpoint folder (or a notation, with --untrained)")
    p.add_argument("--n", type=int, help="first N test images (default: all)")
    p.add_argument("--untrained", action="store_true",
                   help="allow a notation instead of a folder: evaluate an UNTRAINED model (random weights)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ensemble", help="join trained members into an EN checkpoint")
    p.add_argument("members", nargs="+", help="member checkpoint folders, in seed order")
    p.add_argument("--out", required=True, help="new checkpoint folder (never one of the members)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint folder at --out")
    p.add_argument("--eval-n", type=int)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("zoo", help="the quick model zoo shipped in assets/zoo: list it or train what is missing")
    p.add_argument("action", choices=["list", "table", "train"],
                   help="list: JSON plan and status; table: Markdown table of the shipped zoo; train: resume training")
    p.add_argument("--update-readme", action="store_true", help="table: write it into README.md between its markers")
    p.add_argument("--only", nargs="*", help="zoo names to train, in this order, e.g. cifar10/0.7-Shallow")
    p.add_argument("--preset", choices=["quick", "paper"], default="quick",
                   help="train: quick (the shipped zoo) or paper (the paper's models at width 64, 350 epochs, into "
                        "runs/zoo-paper/zoo; point RANDMASK_ZOO there to reproduce on them)")
    p.add_argument("--threads", type=int, help="torch threads for training (default: torch's choice; with --ray, "
                   "the CPUs each model's task asks for on a cluster without GPUs, default 1)")
    _ray_option(p, "train: each model as a task on a Ray cluster (one GPU each where the cluster has GPUs)")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("reproduce", help="rerun the paper's experiments on the zoo: results/*.csv + REPRODUCTION.md")
    p.add_argument("--preset", default="quick", help="quick (small n) or paper (the paper's sample sizes)")
    p.add_argument("--only", nargs="*", help="experiment keys, e.g. table2_transfer figure3_noise")
    p.add_argument("--no-bar", action="store_true")
    p.add_argument("--cache", type=Path, help="folder of crafted adversarial sets to reuse "
                   "(default: $RANDMASK_CRAFTED or runs/crafted)")
    p.add_argument("--no-cache", action="store_true", help="craft every adversarial set afresh")
    p.add_argument("--jobs", type=int, default=1,
                   help="N > 1: the experiments' cells as tasks on a local Ray cluster of N CPUs, as --ray with "
                        "no address but N CPUs (needs pip install -e '.[ray]'; default 1: one process)")
    p.add_argument("--exact", action="store_true",
                   help="attacks and evaluations bit-identical to torchattacks (default: the fast path)")
    _ray_option(p, "run the experiments' cells as tasks on a Ray cluster (a transfer table: a task per attack, "
                   "then one per target; --cache, which keeps the crafted sets for the next run, must be a folder "
                   "every node sees)")
    p.set_defaults(func=cmd_reproduce)

    if importlib.util.find_spec("randmask.cli.attacks"):  # attack/protocol commands live beside the core
        from randmask.cli import attacks as cli_attacks

        cli_attacks.add_subcommands(sub)
    return parser


def _ray_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what}. ADDRESS: 'auto' joins the cluster running here (or RAY_ADDRESS), host:port or "
                        "ray://host:port another; none starts a local one. Needs pip install -e '.[ray]'")


def one_line(exc: BaseException) -> str:
    """An error message on one line, whatever a library put in it."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def attack_mode(exact: bool) -> Iterator[None]:
    """RANDMASK_EXACT=1 for the duration of a command run with --exact (every attack and prediction it makes),
    restored afterwards so an in-process caller keeps its own setting."""
    previous = os.environ.get("RANDMASK_EXACT")
    if exact:
        os.environ["RANDMASK_EXACT"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RANDMASK_EXACT", None)
        else:
            os.environ["RANDMASK_EXACT"] = previous


def main(argv: Sequence[str] | None = None) -> int:
    apply_openmp_wait_policy()  # before any command imports torch; the processes it starts inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with attack_mode(bool(getattr(args, "exact", False))):
            return int(args.func(args) or 0)
    except (RandmaskError, ValueError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
