"""`python -m study ...`: build, run and export human studies from the command line."""
from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from randmask.safe_files import Output, existing_paths

from .admin import overview, set_excluded
from .check import database_problems
from .db import (
    DEFAULT_LOCK_WAIT_S,
    LOCK_WAIT_ENV,
    StudyDBError,
    backup,
    default_db_path,
    lock_wait_s,
    open_db,
    open_db_readonly,
    refuse_empty_file,
    schema_version,
    speaking_lock_waits,
)
from .design import (
    DEFAULT_INACTIVE_MIN,
    DesignError,
    StudyConfig,
    StudyNotFound,
    create_study,
    get_study,
    list_studies,
    set_status,
)
from .export import DESCRIPTION_FILES, export_study
from .serve import DEFAULT_ADDRESS, DEFAULT_BASE_URL, DEFAULT_PORT
from .sets import (
    SetError,
    build_clean_set,
    build_noise_set,
    clean_set,
    load_cifar10_test,
    load_cifar10h,
)
from .validate import check_base_url, participant_link

EXPECTED_ERRORS = (StudyDBError, DesignError, StudyNotFound, SetError, LookupError, ValueError, sqlite3.Error, OSError)
MAX_BOOTSTRAP = 100_000
DEMO_PER_PARTICIPANT = 6
MAX_DEMO_IMAGES = 9_000  # CIFAR-10's 10,000 test images less the demo's catch and practice images, with room


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None, help="study database (default: $STUDY_DB or study_data/study.db)")


def _prog() -> str:
    """How the user ran us, for usage lines: `python -m study` or the installed `randmask-study` script."""
    name = Path(sys.argv[0]).name
    return "python -m study" if name in ("__main__.py", "-m", "") else name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description="Human study: crowd labels for adversarial images.")
    parser.add_argument("--lock-wait", metavar="SECONDS", default=None,
                        help="how long a write waits while another process holds the database's write lock "
                             f"(default: ${LOCK_WAIT_ENV} or {DEFAULT_LOCK_WAIT_S:g})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="create a study from adversarial set folders")
    _db_arg(p)
    p.add_argument("--name", required=True, help="study name used in links (lowercase letters, digits, '-')")
    p.add_argument("--title", default="")
    p.add_argument("--set", dest="sets", action="append", required=True, type=Path, help="set folder (repeat); each condition it holds is used")
    p.add_argument("--conditions", default=None, help="comma-separated subset of the sets' conditions")
    p.add_argument("--catch-set", type=Path, default=None, help="clean unambiguous images for catch trials")
    p.add_argument("--practice-set", type=Path, default=None, help="clean images for practice trials (<= 10)")
    p.add_argument("--labels-per-item", type=int, default=3, help="k: labels each item gets")
    p.add_argument("--items-per-participant", type=int, default=12, help="n: study items per participant (multiple of the number of conditions)")
    p.add_argument("--items-per-condition", type=int, default=None, help="items drawn per condition (default: all of the smallest)")
    p.add_argument("--catch-per-participant", type=int, default=2)
    p.add_argument("--presentation-ms", type=int, default=None, help="show each image this long, then a mask (default: until answered)")
    p.add_argument("--inactive-after-min", "--abandon-after-min", dest="abandon_after_min", type=float,
                   default=DEFAULT_INACTIVE_MIN, help="a participant's unanswered images go back to the pool after "
                   "this many minutes without an answer (default %(default)s)")
    p.add_argument("--completion-code", default=None)
    p.add_argument("--redirect-url", default=None, help="https URL the participant is sent to at the end")
    p.add_argument("--seed", type=int, default=0)

    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the participant server's public address, for the printed link")

    p = sub.add_parser("list", help="list studies with their progress and participant links")
    _db_arg(p)
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)

    p = sub.add_parser("link", help="print a study's participant link (Prolific placeholders, and a plain one)")
    _db_arg(p)
    p.add_argument("name", help="study name")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the participant server's public address "
                   "(default %(default)s)")

    p = sub.add_parser("serve", help="run the participant server (labeling flow only; put it behind an HTTPS proxy)")
    _db_arg(p)
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s); with several "
                   "workers, the first of consecutive ports")
    p.add_argument("--workers", type=int, default=None, help="participant-server processes, one port each, for a "
                   "proxy with sticky sessions (default: one per core; README, 'Several workers')")

    p = sub.add_parser("backup", help="copy the database while the study runs (SQLite online backup)")
    _db_arg(p)
    p.add_argument("--out", type=Path, required=True, help="new file for the copy (never overwritten)")

    for name, text in (("close", "stop accepting answers"), ("open", "accept answers again")):
        p = sub.add_parser(name, help=text)
        _db_arg(p)
        p.add_argument("--study", required=True)

    for name, text in (("exclude", "leave a participant out of the statistics"), ("include", "undo an exclusion")):
        p = sub.add_parser(name, help=text)
        _db_arg(p)
        p.add_argument("--study", required=True)
        p.add_argument("--participant", required=True, help="our participant id (column 'participant' in participants.csv)")
        p.add_argument("--reason", default="")

    _results_args(sub.add_parser("export", help="write responses/items/summary/participants (and CIFAR-10H) CSVs"),
                  out="new folder for the CSVs", overwrite="replace an earlier export at --out",
                  study="one study (default: all, one folder each when several)",
                  bootstrap="bootstrap resamples for the 95%% intervals")

    p = sub.add_parser("check", help="check the database file (integrity, schema, study rows); reads only")
    _db_arg(p)

    p = sub.add_parser("clean-set", help="write a set of clean CIFAR-10 test images (controls, catch, practice)")
    p.add_argument("--out", type=Path, required=True, help="new set folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unambiguous", type=float, default=None, metavar="SHARE",
                   help="only images whose CIFAR-10H share for the true label is >= SHARE (e.g. 0.98)")
    p.add_argument("--avoid", type=Path, action="append", default=[], help="set folder whose test images must not be reused")

    p = sub.add_parser("demo", help="build demo sets (clean + random-noise stand-ins) and a study named 'demo'")
    _db_arg(p)
    p.add_argument("--out", type=Path, required=True, help="new folder for the demo sets")
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo sets at --out")
    p.add_argument("--name", default="demo")
    p.add_argument("--images", type=int, default=24)
    _add_results_commands(sub)
    _add_paper_study(sub)
    return parser


def _is_set(folder: Path) -> bool:
    return (folder / "meta.csv").is_file()


def _is_export(folder: Path) -> bool:
    """An earlier export: CSV files and their description only, or one folder of them per study."""
    def exported(path: Path) -> bool:
        return path.is_file() and not path.is_symlink() and (path.suffix == ".csv" or path.name in DESCRIPTION_FILES)

    return all(exported(p) or p.is_dir() and not p.is_symlink() and all(exported(q) for q in p.iterdir())
               for p in folder.iterdir())


def _data_root() -> Path:
    return Path(os.environ.get("RANDMASK_DATA", "../shared/data"))


def _output(args: argparse.Namespace, **kwargs) -> Output:
    """The command's --out, checked before any work: every other path on its command line (sets, the database)
    and the data folder are inputs it must keep away from."""
    inputs = existing_paths(v for k, v in vars(args).items() if k != "out")
    db = Path(getattr(args, "db", None) or default_db_path())
    return Output(args.out, folder=True, overwrite=args.overwrite, inputs=[*inputs, db, _data_root()], **kwargs)


def _demo(args) -> int:
    """Sets first (under a temporary name, moved into place before the study reads them), then the study; a
    failure anywhere leaves neither the sets nor a new database."""
    out = _output(args, kind="earlier demo sets", replaceable=lambda folder: _is_set(folder / "clean"))
    if not DEMO_PER_PARTICIPANT <= args.images <= MAX_DEMO_IMAGES:  # a participant sees each image once
        raise SetError(f"--images must be from {DEMO_PER_PARTICIPANT} to {MAX_DEMO_IMAGES}, got {args.images}")
    config = StudyConfig(slug=args.name, title="Demo study (noise stand-ins, not attacks)", labels_per_item=3,
                         items_per_participant=DEMO_PER_PARTICIPANT, catch_per_participant=2)
    config.validate()  # a bad name is refused before minutes of building sets, not after
    db_path = Path(args.db or default_db_path())
    refuse_empty_file(db_path, create=True)  # as open_db would, but before the work
    x, y = load_cifar10_test()
    rng = np.random.default_rng(0)
    study_images = np.sort(rng.choice(len(y), size=args.images, replace=False))
    with out as tmp:
        build_clean_set(tmp / "clean", study_images, x=x, y=y)
        build_noise_set(tmp / "noise16", study_images, x=x, y=y, eps=16, seed=1)
        build_noise_set(tmp / "noise32", study_images, x=x, y=y, eps=32, seed=2)
        clean_set(tmp / "catch", 10, seed=3, unambiguous=None, avoid=[tmp / "clean"])
        clean_set(tmp / "practice", 3, seed=4, unambiguous=None, avoid=[tmp / "clean", tmp / "catch"])
        out.commit()
        sets = args.out
        with _database_for_create(db_path) as db:
            create_study(db, config, [sets / "clean", sets / "noise16", sets / "noise32"], sets / "catch",
                         sets / "practice")
            study = get_study(db, args.name)
    print(f"created study {args.name!r} in {args.db or default_db_path()}; after `python -m study serve`, participants open "
          f"{participant_link(DEFAULT_BASE_URL, study.slug, study.link_key, prolific=False)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "clean-set":
        out = _output(args, kind="a set (a folder with meta.csv)", replaceable=_is_set)
        with out as tmp:
            clean_set(tmp, args.count, seed=args.seed, unambiguous=args.unambiguous, avoid=args.avoid)
        print(f"wrote {args.count} clean images to {out.path}")
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "paper-study":
        return _paper_study(args)
    if args.command in RESULTS_COMMANDS:
        return RESULTS_COMMANDS[args.command](args)
    if args.command == "serve":
        from .serve import serve

        # one worker: replaces this process; several: returns when they stop
        return serve(args.db or default_db_path(), args.address, args.port, args.workers)
    if args.command == "backup":
        size = backup(args.db or default_db_path(), args.out)
        print(f"backup written to {args.out} ({size / 1e6:.1f} MB)")
        return 0
    if args.command in ("check", "export"):
        return _read_only(args)
    if args.command == "create":
        check_base_url(args.base_url)  # before the study exists: its link is printed at the end
        with _database_for_create(Path(args.db or default_db_path())) as db:
            return _create(args, db)
    db = open_db(args.db, create=False)
    if args.command == "list":
        for study in list_studies(db):
            o = overview(db, study)
            print(f"{study.slug}\t{study.status}\tparticipants {o.participants} (completed {o.completed}, excluded {o.excluded})"
                  f"\tlabels {o.labels_done}/{o.labels_needed}"
                  f"\tlink {participant_link(args.base_url, study.slug, study.link_key)}")
        return 0
    if args.command == "link":
        study = get_study(db, args.name)
        print(participant_link(args.base_url, study.slug, study.link_key))
        print(f"without Prolific: {participant_link(args.base_url, study.slug, study.link_key, prolific=False)}",
              file=sys.stderr)
        return 0
    if args.command in ("close", "open"):
        set_status(db, args.study, "closed" if args.command == "close" else "open")
        print(f"study {args.study} is {'closed' if args.command == 'close' else 'open'}")
        return 0
    if args.command in ("exclude", "include"):
        set_excluded(db, args.study, args.participant, args.command == "exclude", args.reason)
        print(f"participant {args.participant} {args.command}d")
        return 0
    raise AssertionError(args.command)


def _create(args: argparse.Namespace, db) -> int:
    config = StudyConfig(
        slug=args.name, title=args.title, labels_per_item=args.labels_per_item,
        items_per_participant=args.items_per_participant, items_per_condition=args.items_per_condition,
        catch_per_participant=args.catch_per_participant, presentation_ms=args.presentation_ms,
        abandon_after_min=args.abandon_after_min, completion_code=args.completion_code,
        redirect_url=args.redirect_url, seed=args.seed,
        conditions=[c.strip() for c in args.conditions.split(",")] if args.conditions else None)
    create_study(db, config, args.sets, args.catch_set, args.practice_set)
    _print_created(get_study(db, args.name), args.base_url)
    return 0


def _print_created(study, base_url: str) -> None:
    """What `create` says about a new study: its conditions, what one participant sees, its link."""
    print(f"created study {study.slug!r}: conditions {', '.join(study.conditions)}; "
          f"{study.trials_per_condition} per condition + {study.catch_per_participant} catch per participant; "
          f"completion code {study.completion_code}")
    print(f"participant link: {participant_link(base_url, study.slug, study.link_key)}")


@contextlib.contextmanager
def _database_for_create(path: Path) -> Iterator:
    """The database `create` writes to. A file that does not exist yet is built under a temporary name and
    moved into place only once the study exists, so a refused study leaves no file (and no folder) behind."""
    if path.exists():
        db = open_db(path, create=True)
        try:
            yield db
        finally:
            db.conn.close()
        return
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    done = False
    try:
        db = open_db(tmp, create=True)
        try:
            yield db
        finally:
            db.conn.close()  # the last connection: SQLite folds the WAL into the file and removes it
        if path.exists():
            raise StudyDBError(f"{path} appeared while the study was being created; nothing was changed")
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)
            for folder in made:  # innermost first; only the folders made here, and only while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


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
        out = _output(args, kind="an earlier export (CSV files only)", replaceable=_is_export)
        with out as tmp:
            paths = export_study(db, tmp, args.study, cifar10h=counts, n_boot=args.bootstrap, seed=args.seed)
        print("\n".join(str(out.path / p.relative_to(tmp)) for p in paths))
        return 0
    finally:
        db.conn.close()

# ------------------------------------------------------------------------------------------------ report, plan
def _results_args(p: argparse.ArgumentParser, *, out: str, overwrite: str, study: str, bootstrap: str) -> None:
    """The options `export` and `report` share: what they read, where they write, how intervals are drawn."""
    _db_arg(p)
    p.add_argument("--out", type=Path, required=True, help=out)
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--study", default=None, help=study)
    p.add_argument("--cifar10h", type=Path, default=None,
                   help="CIFAR-10H counts.npy (default: $RANDMASK_DATA/cifar10h/counts.npy if present)")
    p.add_argument("--no-cifar10h", action="store_true")
    p.add_argument("--bootstrap", type=int, default=2000, help=bootstrap)
    p.add_argument("--seed", type=int, default=0)


def _add_results_commands(sub) -> None:
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
    out = _output(args, kind="an earlier report (report.html and PNGs)", replaceable=_is_report)
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


RESULTS_COMMANDS = {"report": _report, "plan": _plan}


# ------------------------------------------------------------------------------------------------ paper-study
def _add_paper_study(sub) -> None:
    from .paper_design import (
        CATCH_IMAGES,
        DEFAULT_EPS,
        DEFAULT_IMAGES,
        DEFAULT_MASKED,
        DEFAULT_PER_CONDITION,
        DEFAULT_UNAMBIGUOUS,
        EPS_RANGE,
        PRACTICE_IMAGES,
    )

    p = sub.add_parser("paper-study", help="build the paper's study from the shipped zoo: the same unambiguous, "
                       "correctly classified test images clean and under FGSM/PGD against Normal ResNet-18 and "
                       "masked nets; catch and practice sets, the plan, the study and its link")
    _db_arg(p)
    p.add_argument("--name", required=True, help="study name used in links (lowercase letters, digits, '-')")
    p.add_argument("--out", type=Path, default=None, help="new folder for the sets (default: study_data/NAME-sets)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier sets of this command at --out")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="test images per condition, the same in "
                   "every condition (default %(default)s)")
    p.add_argument("--eps", type=int, default=DEFAULT_EPS, help=f"the attacks' l-inf budget in grey levels, "
                   f"{EPS_RANGE[0]}-{EPS_RANGE[1]}: FGSM<eps> and PGD<eps> (default %(default)s)")
    p.add_argument("--masked", nargs="+", default=list(DEFAULT_MASKED), metavar="NET",
                   help="masked nets of the zoo attacked beside Normal ResNet-18, by notation "
                        f"(default: {' '.join(DEFAULT_MASKED)}; e.g. --masked 0.9-Shallow 0.7-Shallow)")
    p.add_argument("--unambiguous", type=float, default=DEFAULT_UNAMBIGUOUS, metavar="SHARE",
                   help="only test images whose CIFAR-10H share for the true label is >= SHARE (default %(default)s)")
    p.add_argument("--items-per-participant", type=int, default=None,
                   help=f"study images per participant, a multiple of the conditions (default "
                        f"{DEFAULT_PER_CONDITION} per condition)")
    p.add_argument("--catch-per-participant", type=int, default=3,
                   help=f"catch trials per participant, from a catch set of {CATCH_IMAGES} (default %(default)s); "
                        f"{PRACTICE_IMAGES} practice images come first")
    p.add_argument("--labels-per-item", type=int, default=1, help="at least this many labels per image; the plan "
                   "may ask for more (default %(default)s)")
    p.add_argument("--difference", type=float, default=0.10, help="smallest drop in human accuracy from clean worth "
                   "detecting, which the plan sizes the study for (default %(default)s)")
    p.add_argument("--presentation-ms", type=int, default=None,
                   help="show each image this long, then a mask (default: until answered)")
    p.add_argument("--title", default="")
    p.add_argument("--completion-code", default=None)
    p.add_argument("--redirect-url", default=None, help="https URL the participant is sent to at the end")
    p.add_argument("--seed", type=int, default=0, help="draws the images, the attacks' random starts and the study")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help="the participant server's public address, for the printed link")


def _paper_study(args: argparse.Namespace) -> int:
    """`paper-study`: the sets whole or not at all, then the study (study.paper_study); a failure or Ctrl-C
    anywhere leaves neither the sets nor the study."""
    import time

    from .paper_design import PaperStudyOptions
    from .paper_study import build_paper_study, cpu_seconds

    began, cpu = time.perf_counter(), cpu_seconds()
    check_base_url(args.base_url)  # before any work: the link is printed at the end
    db_path = Path(args.db or default_db_path())
    options = PaperStudyOptions(
        name=args.name, images=args.images, eps=args.eps, masked=tuple(args.masked), unambiguous=args.unambiguous,
        items_per_participant=args.items_per_participant, catch_per_participant=args.catch_per_participant,
        labels_per_item=args.labels_per_item, difference=args.difference, presentation_ms=args.presentation_ms,
        title=args.title, completion_code=args.completion_code, redirect_url=args.redirect_url, seed=args.seed)

    def create(config: StudyConfig, sets: list[Path], catch: Path, practice: Path):
        with _database_for_create(db_path) as db:
            create_study(db, config, sets, catch, practice)
            return get_study(db, config.slug)

    try:
        built = build_paper_study(options, args.out, create, db_path=db_path, overwrite=args.overwrite)
    except KeyboardInterrupt:  # the sets and the study were taken away on the way out
        print("error: interrupted; no sets and no study were kept", file=sys.stderr)
        return 130
    print(f"sets: {built.sets} ({len(built.indices)} test images in each of {len(built.conditions)} conditions)")
    print(built.plan_text)
    print(f"(plan again with other numbers: {built.plan_command})")
    _print_created(built.study, args.base_url)
    print(f"without Prolific: {participant_link(args.base_url, built.study.slug, built.study.link_key, prolific=False)}")
    print(f"done in {time.perf_counter() - began:.0f} s ({cpu_seconds() - cpu:.0f} s of CPU, this process and its "
          f"randmask runs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with speaking_lock_waits(lock_wait_s(args.lock_wait), lambda line: print(line, file=sys.stderr, flush=True)):
            return run(args)
    except EXPECTED_ERRORS as e:
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)  # always one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
