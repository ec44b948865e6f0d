"""What several command groups of `python -m study` share: the --db option, and the check of a command's --out
against every input on its command line."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from randmask.core.safe_files import Output, existing_paths

from .db import default_db_path


def db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None, help="study database (default: $STUDY_DB or study_data/study.db)")



def data_root() -> Path:
    return Path(os.environ.get("RANDMASK_DATA", "../shared/data"))


def output(args: argparse.Namespace, **kwargs) -> Output:
    """The command's --out, checked before any work: every other path on its command line (sets, the database)
    and the data folder are inputs it must keep away from."""
    inputs = existing_paths(v for k, v in vars(args).items() if k != "out")
    db = Path(getattr(args, "db", None) or default_db_path())
    return Output(args.out, folder=True, overwrite=args.overwrite, inputs=[*inputs, db, data_root()], **kwargs)
