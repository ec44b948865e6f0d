"""`python -m study paper-study`: its options, and the command that hands them to study.paper_study and prints
what was built."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_common import db_arg
from .cli_create import database_for_create, print_created
from .db import default_db_path
from .design import StudyConfig, create_study, get_study
from .serve import DEFAULT_BASE_URL
from .validate import check_base_url, participant_link


def add_paper_study(sub) -> None:
    """`paper-study`."""
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
    db_arg(p)
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
        with database_for_create(db_path) as db:
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
    print_created(built.study, args.base_url)
    print(f"without Prolific: {participant_link(args.base_url, built.study.slug, built.study.link_key, prolific=False)}")
    print(f"done in {time.perf_counter() - began:.0f} s ({cpu_seconds() - cpu:.0f} s of CPU, this process and its "
          f"randmask runs)")
    return 0



COMMANDS = {"paper-study": _paper_study}
