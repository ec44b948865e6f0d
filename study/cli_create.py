"""`python -m study create`, `clean-set` and `demo`: the commands that make sets and studies. A new database
file is built under a temporary name and moved into place only once its study exists (`database_for_create`,
which `paper-study` uses too)."""
from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .cli_common import db_arg, output
from .db import StudyDBError, default_db_path, open_db, refuse_empty_file
from .design import DEFAULT_INACTIVE_MIN, StudyConfig, create_study, get_study
from .serve import DEFAULT_BASE_URL
from .sets import SetError, build_clean_set, build_noise_set, clean_set, load_cifar10_test
from .validate import check_base_url, participant_link

DEMO_PER_PARTICIPANT = 6
MAX_DEMO_IMAGES = 9_000  # CIFAR-10's 10,000 test images less the demo's catch and practice images, with room


def add_create(sub) -> None:
    """`create`."""
    p = sub.add_parser("create", help="create a study from adversarial set folders")
    db_arg(p)
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


def add_sets(sub) -> None:
    """`clean-set` and `demo`."""
    p = sub.add_parser("clean-set", help="write a set of clean CIFAR-10 test images (controls, catch, practice)")
    p.add_argument("--out", type=Path, required=True, help="new set folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unambiguous", type=float, default=None, metavar="SHARE",
                   help="only images whose CIFAR-10H share for the true label is >= SHARE (e.g. 0.98)")
    p.add_argument("--avoid", type=Path, action="append", default=[], help="set folder whose test images must not be reused")

    p = sub.add_parser("demo", help="build demo sets (clean + random-noise stand-ins) and a study named 'demo'")
    db_arg(p)
    p.add_argument("--out", type=Path, required=True, help="new folder for the demo sets")
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo sets at --out")
    p.add_argument("--name", default="demo")
    p.add_argument("--images", type=int, default=24)


def _is_set(folder: Path) -> bool:
    return (folder / "meta.csv").is_file()


def _clean_set(args: argparse.Namespace) -> int:
    out = output(args, kind="a set (a folder with meta.csv)", replaceable=_is_set)
    with out as tmp:
        clean_set(tmp, args.count, seed=args.seed, unambiguous=args.unambiguous, avoid=args.avoid)
    print(f"wrote {args.count} clean images to {out.path}")
    return 0


def _demo(args) -> int:
    """Sets first (under a temporary name, moved into place before the study reads them), then the study; a
    failure anywhere leaves neither the sets nor a new database."""
    out = output(args, kind="earlier demo sets", replaceable=lambda folder: _is_set(folder / "clean"))
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
        with database_for_create(db_path) as db:
            create_study(db, config, [sets / "clean", sets / "noise16", sets / "noise32"], sets / "catch",
                         sets / "practice")
            study = get_study(db, args.name)
    print(f"created study {args.name!r} in {args.db or default_db_path()}; after `python -m study serve`, participants open "
          f"{participant_link(DEFAULT_BASE_URL, study.slug, study.link_key, prolific=False)}")
    return 0

def _create_command(args: argparse.Namespace) -> int:
    check_base_url(args.base_url)  # before the study exists: its link is printed at the end
    with database_for_create(Path(args.db or default_db_path())) as db:
        return _create(args, db)


def _create(args: argparse.Namespace, db) -> int:
    config = StudyConfig(
        slug=args.name, title=args.title, labels_per_item=args.labels_per_item,
        items_per_participant=args.items_per_participant, items_per_condition=args.items_per_condition,
        catch_per_participant=args.catch_per_participant, presentation_ms=args.presentation_ms,
        abandon_after_min=args.abandon_after_min, completion_code=args.completion_code,
        redirect_url=args.redirect_url, seed=args.seed,
        conditions=[c.strip() for c in args.conditions.split(",")] if args.conditions else None)
    create_study(db, config, args.sets, args.catch_set, args.practice_set)
    print_created(get_study(db, args.name), args.base_url)
    return 0


def print_created(study, base_url: str) -> None:
    """What `create` says about a new study: its conditions, what one participant sees, its link."""
    print(f"created study {study.slug!r}: conditions {', '.join(study.conditions)}; "
          f"{study.trials_per_condition} per condition + {study.catch_per_participant} catch per participant; "
          f"completion code {study.completion_code}")
    print(f"participant link: {participant_link(base_url, study.slug, study.link_key)}")


@contextlib.contextmanager
def database_for_create(path: Path) -> Iterator:
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


COMMANDS = {"create": _create_command, "clean-set": _clean_set, "demo": _demo}
