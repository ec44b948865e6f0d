"""The commands that read a study database and never write to it: `check`, `export`, `report` and `plan` (with
--pilot). Each opens it read-only; all but `check` refuse a database that fails `check`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .check import database_problems
from .cli_common import db_arg, output
from .db import StudyDBError, default_db_path, open_db_readonly, schema_version
from .design import get_study, list_studies
from .export import DESCRIPTION_FILES, export_study
from .sets import SetError, load_cifar10h

MAX_BOOTSTRAP = 100_000


def add_export_check(sub) -> None:
    """`export` and `check`."""
    _results_args(sub.add_parser("export", help="write responses/items/summary/participants (and CIFAR-10H) CSVs"),
                  out="new folder for the CSVs", overwrite="replace an earlier export at --out",
                  study="one study (default: all, one folder each when several)",
                  bootstrap="bootstrap resamples for the 95%% intervals")

    p = sub.add_parser("check", help="check the database file (integrity, schema, study rows); reads only")
    db_arg(p)


def _results_args(p: argparse.ArgumentParser, *, out: str, overwrite: str, study: str, bootstrap: str) -> None:
    """The options `export` and `report` share: what they read, where they write, how intervals are drawn."""
    db_arg(p)
    p.add_argument("--out", type=Path, required=True, help=out)
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--study", default=None, help=study)
    p.add_argument("--cifar10h", type=Path, default=None,
                   help="CIFAR-10H counts.npy (default: $RANDMASK_DATA/cifar10h/counts.npy if present)")
    p.add_argument("--no-cifar10h", action="store_true")
    p.add_argument("--bootstrap", type=int, default=2000, help=bootstrap)
    p.add_argument("--seed", type=int, default=0)


def add_report_plan(sub) -> None:
    """`report` and `plan`."""
    _results_args(sub.add_parser("report", help="write the study's results as one self-contained HTML file (and PNGs)"),
                  out="new (or empty) folder for report.html and the PNGs",
                  overwrite="replace an earlier report at --out", study="study name (default: the only study)",
                  bootstrap="bootstrap resamples for the participant intervals")

    p = sub.add_parser("plan", help="participants, labels per item, duration and cost a study needs (simulated, "
                       "with an analytic check)")
    p.add_argument("--conditions", default=None, help="comma-separated; the first is the reference (clean)")
    p.add_argument("--accuracy", default=None, help="expected human accuracy per condition, comma-separated shares")
    p.add_argument("--pilot", type=Path, default=None, help="read the expected accuracies from this study database")
    p.add_argument("--pilot-study", default=None, help="the pilot's study name (default: its only study)")
    p.add_argument("--difference", type=float, default=0.10, help="smallest drop in accuracy worth detecting (share)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.80)
    p.add_argument("--items-per-condition", type=int, default=100, help="images each condition offers")
    p.add_argument("--items-per-participant", type=int, default=30)
    p.add_argument("--catch-per-participant", type=int, default=3)
    p.add_argument("--practice", type=int, default=3, help="practice images per participant")
    p.add_argument("--labels-per-item", type=int, default=1, help="at least this many labels per image")
    p.add_argument("--seconds-per-item", type=float, default=4.0)
    p.add_argument("--overhead-min", type=float, default=2.0, help="minutes for consent, instructions, end page")
    p.add_argument("--pay-per-hour", type=float, default=12.0)
    p.add_argument("--fee-share", type=float, default=0.0, help="platform fee as a share of the pay (e.g. 0.33)")
    p.add_argument("--simulations", type=int, default=1000, help="simulated studies per size")
    p.add_argument("--seed", type=int, default=0)


def _is_export(folder: Path) -> bool:
    """An earlier export: CSV files and their description only, or one folder of them per study."""
    def exported(path: Path) -> bool:
        return path.is_file() and not path.is_symlink() and (path.suffix == ".csv" or path.name in DESCRIPTION_FILES)

    return all(exported(p) or p.is_dir() and not p.is_symlink() and all(exported(q) for q in p.iterdir())
               for p in folder.iterdir())


def _read_only(args: argparse.Namespace) -> int:
    """`check` and `export`: the database is opened read-only and must pass every check."""
    path = Path(args.db or default_db_path())
    if args.command == "export" and not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise ValueError(f"--bootstrap must be from 0 to {MAX_BOOTSTRAP}, got {args.bootstrap}")
    db = open_db_readonly(path)
    try:
        problems = database_problems(db)
        if args.command == "check":
            if problems:
                print("\n".join(problems))
                print(f"error: {path}: {len(problems)} problem(s), listed above", file=sys.stderr)
                return 1
            print(f"ok: schema version {schema_version(db)}, {len(list_studies(db))} studies")
            return 0
        if problems:
            raise StudyDBError(f"{path} fails `python -m study check` ({len(problems)} problem(s)); first: "
                               f"{problems[0]}")
        counts = None
        if not args.no_cifar10h:
            try:
                counts = load_cifar10h(args.cifar10h)
            except SetError:
                if args.cifar10h is not None:
                    raise
                print("note: CIFAR-10H counts not found, skipping that comparison", file=sys.stderr)
        out = output(args, kind="an earlier export (CSV files only)", replaceable=_is_export)
        with out as tmp:
            paths = export_study(db, tmp, args.study, cifar10h=counts, n_boot=args.bootstrap, seed=args.seed)
        print("\n".join(str(out.path / p.relative_to(tmp)) for p in paths))
        return 0
    finally:
        db.conn.close()


def _shares(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: comma-separated numbers, got {text!r}") from None


def _plan(args: argparse.Namespace) -> int:
    from .plan import PlanInput, make_plan, plan_text

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()] if args.conditions else None
    if args.pilot is not None:
        if args.accuracy:
            raise ValueError("give --accuracy or --pilot, not both")
        conditions, accuracy = _pilot_accuracy(args.pilot, args.pilot_study, conditions)
    elif args.accuracy and conditions:
        accuracy = _shares(args.accuracy, "--accuracy")
    else:
        raise ValueError("give --conditions with --accuracy, or --pilot DB")
    made = make_plan(PlanInput(
        conditions=conditions, accuracy=accuracy, difference=args.difference, alpha=args.alpha, power=args.power,
        items_per_condition=args.items_per_condition, items_per_participant=args.items_per_participant,
        catch_per_participant=args.catch_per_participant, practice=args.practice,
        min_labels_per_item=args.labels_per_item, seconds_per_item=args.seconds_per_item,
        overhead_min=args.overhead_min, pay_per_hour=args.pay_per_hour, fee_share=args.fee_share,
        simulations=args.simulations, seed=args.seed))
    print(plan_text(made))
    return 0


def _pilot_accuracy(path: Path, slug: str | None, conditions: list[str] | None) -> tuple[list[str], list[float]]:
    """Conditions (clean first) and their human accuracy in a pilot study; shares of 0 or 1 are moved half an
    answer inwards (a pilot that saw no error does not mean people never err)."""
    from .results import compute_results

    db = open_db_readonly(path)
    try:
        problems = database_problems(db)
        if problems:
            raise StudyDBError(f"{path} fails `python -m study check` ({len(problems)} problem(s)); first: {problems[0]}")
        # the accuracies only: no participant bootstrap
        accuracy = compute_results(db, _only_study(db, slug), n_boot=1, min_participants=2**31).accuracy
    finally:
        db.conn.close()
    ours = accuracy[(accuracy["source"] == "this study") & (accuracy["n_answers"] > 0)].set_index("condition")
    conditions = conditions or list(ours.index)
    missing = [c for c in conditions if c not in ours.index]
    if missing:
        raise LookupError(f"the pilot has no answers for {', '.join(missing)} (it has: {', '.join(ours.index)})")
    half = 0.5 / ours["n_answers"]
    shares = ours["accuracy"].clip(lower=half, upper=1 - half)
    return conditions, [float(shares[c]) for c in conditions]


def _only_study(db, slug: str | None):
    if slug:
        return get_study(db, slug)
    studies = list_studies(db)
    if len(studies) != 1:
        names = ", ".join(s.slug for s in studies) or "none"
        raise LookupError(f"the database holds {len(studies)} studies ({names}); name one with --study")
    return studies[0]


def _cifar10h_or_none(args: argparse.Namespace) -> np.ndarray | None:
    if args.no_cifar10h:
        return None
    try:
        return load_cifar10h(args.cifar10h)
    except SetError:
        if args.cifar10h is not None:
            raise
        print("note: CIFAR-10H counts not found, skipping that baseline", file=sys.stderr)
        return None


def _is_report(folder: Path) -> bool:
    """What `report` writes and nothing else: report.html and PNGs."""
    files = list(folder.iterdir())
    return any(f.name == "report.html" for f in files) and all(
        f.is_file() and not f.is_symlink() and (f.name == "report.html" or f.suffix == ".png") for f in files)


def _report(args: argparse.Namespace) -> int:
    from .report import figures, report_html, write_pngs
    from .results import compute_results

    path = Path(args.db or default_db_path())
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise ValueError(f"--bootstrap must be from 0 to {MAX_BOOTSTRAP}, got {args.bootstrap}")
    out = output(args, kind="an earlier report (report.html and PNGs)", replaceable=_is_report)
    db = open_db_readonly(path)
    try:
        problems = database_problems(db)
        if problems:
            raise StudyDBError(f"{path} fails `python -m study check` ({len(problems)} problem(s)); first: {problems[0]}")
        study = _only_study(db, args.study)
        results = compute_results(db, study, cifar10h=_cifar10h_or_none(args), n_boot=args.bootstrap, seed=args.seed)
    finally:
        db.conn.close()
    made = figures(results)
    with out as tmp:
        (tmp / "report.html").write_text(report_html(results, made), encoding="utf-8")
        pngs = write_pngs(made, tmp)
    print(args.out / "report.html")
    if pngs:
        print(f"{len(pngs)} PNGs in {args.out}")
    else:
        print("note: no PNGs: kaleido is not installed (pip install kaleido to get them)", file=sys.stderr)
    return 0


COMMANDS = {"check": _read_only, "export": _read_only, "report": _report, "plan": _plan}
