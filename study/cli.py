"""`python -m study ...`: build, run and export human studies from the command line.

Here: the top-level parser, the dispatch and the one-line errors. Each command group lives in its own module and
adds its own subcommands: cli_create (create, clean-set, demo), cli_admin (list, link, serve, backup, close/open,
exclude/include), cli_results (export, check, report, plan), cli_paper (paper-study); cli_common holds what they
share (--db, the --out check).
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from . import cli_admin, cli_create, cli_paper, cli_results
from .db import DEFAULT_LOCK_WAIT_S, LOCK_WAIT_ENV, StudyDBError, lock_wait_s, speaking_lock_waits
from .design import DesignError, StudyNotFound
from .sets import SetError

EXPECTED_ERRORS = (StudyDBError, DesignError, StudyNotFound, SetError, LookupError, ValueError, sqlite3.Error, OSError)
COMMANDS = {**cli_create.COMMANDS, **cli_admin.COMMANDS, **cli_results.COMMANDS, **cli_paper.COMMANDS}


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
    # in the order `--help` lists them
    cli_create.add_create(sub)
    cli_admin.add_links(sub)
    cli_admin.add_running(sub)
    cli_admin.add_status(sub)
    cli_results.add_export_check(sub)
    cli_create.add_sets(sub)
    cli_results.add_report_plan(sub)
    cli_paper.add_paper_study(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    return COMMANDS[args.command](args)


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
