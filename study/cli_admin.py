"""The commands that run a study and look after it: `list`, `link`, `serve`, `backup`, `close`/`open` and
`exclude`/`include`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .admin import overview, set_excluded
from .cli_common import db_arg
from .db import backup, default_db_path, open_db
from .design import get_study, list_studies, set_status
from .serve import DEFAULT_ADDRESS, DEFAULT_BASE_URL, DEFAULT_PORT
from .validate import participant_link


def add_links(sub) -> None:
    """`list` and `link`."""
    p = sub.add_parser("list", help="list studies with their progress and participant links")
    db_arg(p)
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)

    p = sub.add_parser("link", help="print a study's participant link (Prolific placeholders, and a plain one)")
    db_arg(p)
    p.add_argument("name", help="study name")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the participant server's public address "
                   "(default %(default)s)")


def add_running(sub) -> None:
    """`serve` and `backup`."""
    p = sub.add_parser("serve", help="run the participant server (labeling flow only; put it behind an HTTPS proxy)")
    db_arg(p)
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s); with several "
                   "workers, the first of consecutive ports")
    p.add_argument("--workers", type=int, default=None, help="participant-server processes, one port each, for a "
                   "proxy with sticky sessions (default: one per core; README, 'Several workers')")

    p = sub.add_parser("backup", help="copy the database while the study runs (SQLite online backup)")
    db_arg(p)
    p.add_argument("--out", type=Path, required=True, help="new file for the copy (never overwritten)")


def add_status(sub) -> None:
    """`close`, `open`, `exclude` and `include`."""
    for name, text in (("close", "stop accepting answers"), ("open", "accept answers again")):
        p = sub.add_parser(name, help=text)
        db_arg(p)
        p.add_argument("--study", required=True)

    for name, text in (("exclude", "leave a participant out of the statistics"), ("include", "undo an exclusion")):
        p = sub.add_parser(name, help=text)
        db_arg(p)
        p.add_argument("--study", required=True)
        p.add_argument("--participant", required=True, help="our participant id (column 'participant' in participants.csv)")
        p.add_argument("--reason", default="")


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    # one worker: replaces this process; several: returns when they stop
    return serve(args.db or default_db_path(), args.address, args.port, args.workers)


def _backup(args: argparse.Namespace) -> int:
    size = backup(args.db or default_db_path(), args.out)
    print(f"backup written to {args.out} ({size / 1e6:.1f} MB)")
    return 0


def _organise(args: argparse.Namespace) -> int:
    """`list`, `link`, `close`/`open`, `exclude`/`include`: on the existing database, which they may migrate."""
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


COMMANDS = {"serve": _serve, "backup": _backup,
            **dict.fromkeys(("list", "link", "close", "open", "exclude", "include"), _organise)}
