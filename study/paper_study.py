"""`python -m study paper-study`: the paper's human study, built in one command from the shipped zoo.

The same test images in every condition: clean, and FGSM<eps> and PGD<eps> (the paper's notation) against Normal
ResNet-18 and each chosen masked net. The images are CIFAR-10 test images that people find unambiguous (CIFAR-10H:
at least `--unambiguous` of the annotators chose the true label), in an order drawn from `--seed`, and of those
the first `--images` that Normal ResNet-18 and every chosen masked net classify correctly. Then catch and practice
sets of other unambiguous images, the planner's numbers for the study, the study itself and its link.

The attacks run as `python -m randmask attack` processes (the study imports no torch): the first one, FGSM against
Normal ResNet-18, chooses the images (`--indices` candidates, `--also-correct` the masked nets); every later one is
given exactly those images and the same nets, so each set's own run confirms that every net classifies its images
correctly, and the sets are then checked to hold the same images. Everything is written under a temporary name and
moved into place only when it is whole; the study goes into the database last, so a failure anywhere (a refused
option, a failed attack, Ctrl-C) leaves neither sets nor a study behind.

Here: the randmask runs, the progress lines, and the command that builds the sets and the study. What the study
is made of (options and their checks, the zoo's nets, the conditions, the candidate images) is study.paper_design.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from randmask.core.safe_files import Output
from randmask.core.settings import data_root, zoo_root

from .db import open_db_readonly
from .design import Study
from .paper_design import (
    CATCH_IMAGES,
    PRACTICE_IMAGES,
    Condition,
    Net,
    PaperStudyError,
    PaperStudyOptions,
    candidates,
    check_options,
    conditions_for,
    human_accuracy,
    resolve_nets,
)
from .sets import CLEAN, build_clean_set, clean_set, load_cifar10_test, load_cifar10h, read_set


@dataclass(frozen=True)
class PaperStudy:
    """What the command built: the sets' folder, the test images every condition shows, the study."""

    sets: Path
    indices: list[int]
    conditions: list[str]  # clean first
    plan_text: str
    plan_command: str
    study: Study


# ------------------------------------------------------------------------------------------------ randmask runs
def _randmask_env(data: Path) -> dict[str, str]:
    """The children run the randmask beside this study package, on the same data folder."""
    beside = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "RANDMASK_DATA": str(data), "PYTHONPATH": beside + (os.pathsep + path if path else "")}


def attack_command(condition: Condition, indices: list[int], n: int, judges: list[Net], others: list[Net],
                   out: Path, seed: int) -> list[str]:
    """The `randmask attack` run that writes one condition's set."""
    command = [sys.executable, "-m", "randmask", "attack", "--model", str(condition.net.folder),
               "--attack", condition.attack, "--indices", ",".join(map(str, indices)), "--n", str(n),
               "--out", str(out), "--seed", str(seed), "--quiet"]
    if judges:
        command += ["--also-correct", *(str(j.folder) for j in judges)]
    if others:
        command += ["--predict", *(str(o.folder) for o in others)]
    return command


def run_randmask(command: list[str], data: Path, what: str, warn: Callable[[str], None]) -> dict:
    """Run one randmask command; its JSON summary, its warnings passed on, its error as one line of ours."""
    done = subprocess.run(command, env=_randmask_env(data), capture_output=True, text=True, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("warning:"):
            warn(f"warning: {what}: {line.removeprefix('warning:').strip()}")
    if done.returncode != 0:
        errors = [line for line in lines if line.startswith("error:")]
        reason = errors[-1].removeprefix("error:").strip() if errors else (lines[-1] if lines else
                                                                           f"exit status {done.returncode}")
        raise PaperStudyError(f"{what}: {reason}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PaperStudyError(f"{what}: no summary line from randmask attack") from None


# ------------------------------------------------------------------------------------------------ progress
class Stages:
    """One line per stage: what it does when it starts, what came of it and its time when it ends. Warnings
    raised meanwhile (`note`) follow the finished line, so that they never split it."""

    def __init__(self, total: int, write: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.total, self.done, self.pending = total, 0, []
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))

    def note(self, line: str) -> None:
        self.pending.append(line)

    @contextlib.contextmanager
    def stage(self, text: str) -> Iterator[list[str]]:
        self.done += 1
        self.write(f"[{self.done}/{self.total}] {text} ...")
        began = time.perf_counter()
        outcome: list[str] = []
        try:
            yield outcome
        except BaseException:
            self.write(" failed\n")
            raise
        else:
            self.write(f" {'; '.join(outcome)}{'; ' if outcome else ''}{time.perf_counter() - began:.1f} s\n")
        finally:
            for line in self.pending:
                self.warn(line)
            self.pending.clear()


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the randmask runs), user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def check_name_free(db_path: Path, slug: str) -> None:
    """A study of this name in an existing database is refused before any work (create checks again, in its
    write transaction)."""
    if not db_path.exists():
        return
    db = open_db_readonly(db_path)
    try:
        if db.execute("SELECT 1 FROM studies WHERE slug = ?", [slug]).fetchone():
            raise PaperStudyError(f"a study named {slug!r} already exists in {db_path}; choose another --name")
    finally:
        db.conn.close()


# ------------------------------------------------------------------------------------------------ the command
def is_paper_sets(folder: Path) -> bool:
    """What this command writes at --out: set folders only, a clean one among them (what --overwrite replaces)."""
    def is_set(path: Path) -> bool:
        return (path / "meta.csv").is_file()

    return is_set(folder / CLEAN) and all(is_set(p) for p in folder.iterdir() if not p.name.startswith("."))


def build_paper_study(options: PaperStudyOptions, out: Path | None, create: Callable[..., Study], *, db_path: Path,
                      overwrite: bool = False, stages_write: Callable[[str], None] | None = None,
                      warn: Callable[[str], None] | None = None) -> PaperStudy:
    """Every check first; then the sets into `out` (default study_data/NAME-sets), whole or not at all; then
    `create(config, sets, catch_set, practice_set)` inside the same block, so that a failure there takes the sets
    away again."""
    from .plan import PlanInput, make_plan, plan_text

    nets = resolve_nets(options.masked)
    conditions = conditions_for(nets, options.eps)
    names = [CLEAN, *(c.name for c in conditions)]
    config = check_options(options, len(names))
    data = data_root()
    out = Output(out or Path("study_data") / f"{options.name}-sets", folder=True, overwrite=overwrite,
                 inputs=[db_path, data, zoo_root()], kind="earlier paper-study sets", replaceable=is_paper_sets)
    check_name_free(db_path, options.name)
    x, y = load_cifar10_test(str(data))
    counts = load_cifar10h(data / "cifar10h" / "counts.npy")
    stages = Stages(4 + len(conditions), stages_write, warn)
    warn = stages.note
    with stages.stage("candidates: CIFAR-10 test images people find unambiguous") as outcome:
        pool = candidates(y, counts, options.unambiguous, options.seed)
        needed = options.images + CATCH_IMAGES + PRACTICE_IMAGES
        if len(pool) < needed:
            raise PaperStudyError(
                f"only {len(pool)} test images are unambiguous (CIFAR-10H share of the true label >= "
                f"{options.unambiguous:g}); {needed} are needed ({options.images} per condition + {CATCH_IMAGES} "
                f"catch + {PRACTICE_IMAGES} practice): lower --images or --unambiguous")
        outcome.append(f"{len(pool):,} whose CIFAR-10H share of the true label is >= {options.unambiguous:g}")

    with out as tmp:
        first, *rest = conditions
        judges = [net.name for net in nets]
        with stages.stage(f"{first.attack} against {first.net.name}, on the first {options.images} candidates that "
                          f"{', '.join(judges[:-1])} and {judges[-1]} classify correctly") as outcome:
            indices = [item.test_index for item in _attack(first, [int(i) for i in pool], None, nets, options, tmp,
                                                           data, warn, outcome)]
            if len(indices) != options.images:
                raise PaperStudyError(f"{first.name}: {len(indices)} images, {options.images} asked for")

        with stages.stage("planning its size (python -m study plan)") as outcome:
            reference = human_accuracy(y, counts, indices)
            plan_input = PlanInput(
                conditions=names, accuracy=[reference] + [max(reference - options.difference, 0.01)] * len(conditions),
                difference=options.difference, items_per_condition=options.images,
                items_per_participant=config.items_per_participant, catch_per_participant=config.catch_per_participant,
                practice=PRACTICE_IMAGES, min_labels_per_item=options.labels_per_item, seed=options.seed)
            plan = make_plan(plan_input)
            labels = labels_per_image(plan, options.images, options.labels_per_item)
            outcome.append(f"clean {reference:.1%} (CIFAR-10H annotators on these images); a drop of "
                           f"{100 * options.difference:g} points needs {needed_answers(plan):.0f} answers a condition, "
                           f"so {labels} label{'s' if labels != 1 else ''} per image")

        for condition in rest:
            with stages.stage(f"{condition.attack} against {condition.net.name}") as outcome:
                _attack(condition, indices, indices, nets, options, tmp, data, warn, outcome)

        with stages.stage("clean, catch and practice sets (python -m study clean-set)") as outcome:
            build_clean_set(tmp / CLEAN, indices, x=x, y=y)
            clean_set(tmp / "catch", CATCH_IMAGES, seed=options.seed, unambiguous=options.unambiguous,
                      avoid=[tmp / CLEAN], data_dir=data)
            clean_set(tmp / "practice", PRACTICE_IMAGES, seed=options.seed + 1, unambiguous=options.unambiguous,
                      avoid=[tmp / CLEAN, tmp / "catch"], data_dir=data)
            outcome.append(f"the same {len(indices)} images clean; {CATCH_IMAGES} catch and {PRACTICE_IMAGES} "
                           f"practice images of their own")

        out.commit()  # the study reads its sets where they stay
        final = out.path
        config = replace(config, labels_per_item=labels)
        with stages.stage(f"creating study {options.name!r} (python -m study create)") as outcome:
            study = create(config, [final / CLEAN, *(final / c.folder for c in conditions)], final / "catch",
                           final / "practice")
            outcome.append(f"{len(names)} conditions x {options.images} images, {labels} label"
                           f"{'s' if labels != 1 else ''} each, in {db_path}")
    return PaperStudy(sets=final, indices=indices, conditions=names, plan_text=plan_text(plan),
                      plan_command=plan_command(plan_input), study=study)


def _attack(condition: Condition, given: list[int], expected: list[int] | None, nets: list[Net],
            options: PaperStudyOptions, tmp: Path, data: Path, warn: Callable[[str], None], outcome: list[str]) -> list:
    """One condition's set by `randmask attack` on the first --images of `given` that every net classifies
    correctly (randmask refuses to write fewer), checked: under the condition's name, and holding exactly the
    `expected` images (None for the run that chooses them)."""
    others = [net for net in nets if net != condition.net]
    what = f"{condition.attack} against {condition.net.name}"
    if expected is None:
        what = f"choosing the study's images ({what})"
    summary = run_randmask(attack_command(condition, given, options.images, others, others, tmp / condition.folder,
                                          options.seed), data, what, warn)
    items = read_set(tmp / condition.folder)
    wrong = {item.condition for item in items} - {condition.name}
    if wrong:
        raise PaperStudyError(f"{what}: randmask wrote condition {sorted(wrong)[0]!r}, not {condition.name!r}")
    if expected is not None and [item.test_index for item in items] != expected:
        raise PaperStudyError(f"{what}: its images differ from the first set's")
    outcome.append(f"{len(items)} images, {summary.get('fooled', 0)} of them fool {condition.net.name}")
    return items


def needed_answers(plan) -> float:
    """Answers a condition needs for the plan's power: the larger of its simulated and analytic estimates (the
    participants it names may be more, when every image is to be labelled at least once)."""
    return max(plan.simulated_answers, plan.analytic_answers)


def labels_per_image(plan, images: int, at_least: int) -> int:
    """k for the study, which stops at k labels an image: the fewest (and at least `at_least`) whose k x images
    answers a condition reach the answers the plan needs."""
    return max(at_least, math.ceil(needed_answers(plan) / images - 1e-9))


def plan_command(plan) -> str:
    """The `python -m study plan` command that gives these numbers, to plan again with others."""
    return (f"python -m study plan --conditions '{','.join(plan.conditions)}' --accuracy "
            f"{','.join(f'{a:.4f}' for a in plan.accuracy)} --difference {plan.difference:g} "
            f"--items-per-condition {plan.items_per_condition} --items-per-participant {plan.items_per_participant} "
            f"--catch-per-participant {plan.catch_per_participant} --practice {plan.practice} "
            f"--labels-per-item {plan.min_labels_per_item} --seed {plan.seed}")
