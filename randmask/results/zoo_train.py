"""Training the zoo's plan (`zoo train`): each missing or stale model is trained (resumed) in runs/zoo and exported
into the zoo at half precision; several lanes share the plan through lock files, or a Ray cluster trains it."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from randmask.core import cluster
from randmask.core.errors import RandmaskError
from randmask.core.stats import wilson_interval
from randmask.experiments.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    read_config,
    save_checkpoint,
)
from randmask.experiments.data import load_uint8
from randmask.experiments.resume import RESUME_FILE
from randmask.experiments.train import LOG_FILE, accuracy, assemble_ensemble, train
from randmask.experiments.train_config import TrainConfig
from randmask.results import zoo as zoo_plan  # ZOO and ENSEMBLES read when used: a test swaps in a small plan
from randmask.results.zoo import CHECK_N, RUNS_ROOT, ZOO_ROOT, Entry, is_current, planned_config, same_recipe


@contextmanager
def claim(run: Path, takeover: bool = False) -> Iterator[bool]:
    """Claim a run folder for this process, so that several `zoo train` lanes share one plan: yields False while
    another live process holds it. A lock left by a dead process is taken over; with `takeover` (a Ray task: the
    driver gives each model to one task, and Ray starts a retry only once the attempt before it is dead, perhaps on
    another node, where the pid in the lock means nothing) any lock is."""
    lock = run.with_name(run.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    if lock.exists() and (takeover or not _alive(lock)):
        lock.unlink(missing_ok=True)  # left by a process that is gone
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        yield False
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _alive(lock: Path) -> bool:
    """The process whose pid the lock file holds still runs."""
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)
    except PermissionError:  # exists, run by another user
        return True
    except (OSError, ValueError):  # unreadable, empty, or no such process
        return False
    return True


def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_zoo(runs: Path = RUNS_ROOT, zoo: Path = ZOO_ROOT, only: list[str] | None = None,
              say: Callable[[str], None] = _say_stderr, plan: Sequence[Entry] | None = None,
              configure: Callable[[Entry], TrainConfig] = planned_config, ray: str | None = None,
              threads: int | None = None) -> None:
    """Train every entry that is missing or was trained with another recipe (resuming a partial run), exporting
    each as soon as it is done. A shipped model of an older recipe stays in place until its successor is done.

    `plan` (default ZOO) and `configure` (default planned_config) say what to train and how. With `ray` (an address,
    'auto', or cluster.LOCAL) each model trains as a Ray task on one GPU where the cluster has GPUs, else on
    `threads` CPUs (default 1): two one-thread trainings beat one two-thread training on a 2-core CPU."""
    plan, ensembles = zoo_plan.ZOO if plan is None else plan, zoo_plan.ENSEMBLES
    by_name = {e.name: e for e in plan}
    unknown = [name for name in only or [] if name not in by_name and name not in ensembles]
    if unknown:
        raise RandmaskError(f"not in the zoo plan: {', '.join(unknown)} (see python -m randmask zoo list)")
    # `only` in the order given; an EN name stands for its members (the EN is assembled once all are done)
    chosen = [e for name in only for e in (ensembles[name][1] if name in ensembles else [by_name[name]])] \
        if only else plan
    todo = []
    for entry in chosen:
        cfg = configure(entry)
        if is_current(zoo / entry.name, cfg=cfg):
            say(f"{entry.name}: already in the zoo ({zoo / entry.name})")
        else:
            todo.append((entry, cfg))
    if ray is None:
        for entry, cfg in todo:
            train_entry(entry.name, cfg, runs, zoo, entry.role, entry.label, say)
    elif todo:
        _train_on_ray(todo, runs, zoo, say, ray, threads)
    for name, (_, members) in ensembles.items():
        folders = [zoo / e.name for e in members]
        done = (zoo / name / WEIGHTS_FILE).exists() and same_recipe(_recipe_of(zoo / name), _recipe_of(folders[0]))
        if all(is_current(f, e) for f, e in zip(folders, members, strict=True)) and not done:
            assemble_ensemble(folders, runs / name)
            shipped = export(runs / name, zoo / name, role=f"EN of the five {members[0].notation} members")
            say(f"{name}: assembled from its five members, {100 * shipped['clean_accuracy']:.1f}% clean")


def train_entry(name: str, cfg: TrainConfig, runs: Path, zoo: Path, role: str = "", label: str = "",
                say: Callable[[str], None] = _say_stderr, takeover: bool = False) -> dict | None:
    """Train (or resume) one zoo model in runs/<name> and export it to zoo/<name>; returns the shipped config, or
    None when another live lane holds it."""
    out = runs / name
    with claim(out, takeover) as mine:
        if not mine:
            say(f"{name}: another process is training it ({out}.lock); skipped")
            return None
        if is_current(zoo / name, cfg=cfg):  # another lane finished it meanwhile
            say(f"{name}: already in the zoo ({zoo / name})")
            return read_config(zoo / name)
        if (out / WEIGHTS_FILE).exists() and not is_current(out, cfg=cfg):
            out.rename(out.with_name(f"{out.name}.old-recipe-{int(time.time())}"))  # keep it, never overwrite
        if not (out / WEIGHTS_FILE).exists():
            resumed = (out / RESUME_FILE).exists()
            say(f"{name}: training{' (resuming)' if resumed else ''}; progress in {out / LOG_FILE}")
            train(cfg, out, show_bar=False)
        # a control's or a wider net's label names it in reports (its notation alone is another model's)
        shipped = export(out, zoo / name, role=role, label=label)
        say(f"{name}: in the zoo, {100 * shipped['clean_accuracy']:.1f}% clean ({zoo / name})")
        return shipped


def ray_train_entry(name: str, cfg: TrainConfig, runs: Path, zoo: Path, role: str, label: str,
                    num_cpus: float) -> dict:
    """One model as a Ray task (see cluster.run); a retry after its worker died resumes from resume.pt."""
    cluster.worker_threads(num_cpus)
    shipped = train_entry(name, cfg, runs, zoo, role, label, takeover=True)
    return {"clean_accuracy": shipped["clean_accuracy"]} if shipped else {}


def _train_on_ray(todo: list[tuple[Entry, TrainConfig]], runs: Path, zoo: Path, say: Callable[[str], None],
                  address: str, threads: int | None) -> None:
    say(cluster.connect(address))
    gpus = cluster.cluster_gpus()
    cpus = 1 if gpus else (threads or 1)
    jobs = [cluster.Job(entry.name, ray_train_entry, (entry.name, cfg, runs, zoo, entry.role, entry.label, cpus),
                        num_cpus=cpus, num_gpus=1 if gpus else 0) for entry, cfg in todo]
    began = time.time()
    epochs = {entry.name: cfg.epochs for entry, cfg in todo}
    last = {"said": began}

    def tick(done: set[str], pending: set[str]) -> None:
        if time.time() - last["said"] >= PROGRESS_EVERY:
            last["said"] = time.time()
            say(zoo_progress(runs, epochs, len(done), pending, began))

    say(f"{len(jobs)} model(s) to train on the cluster, each on " + ("one GPU" if gpus else f"{cpus} CPU(s)"))
    left = set(epochs)
    for name, result in cluster.run(jobs, tick):
        left.discard(name)
        say(f"{name}: done on the cluster, {100 * result.get('clean_accuracy', math.nan):.1f}% clean; "
            + zoo_progress(runs, epochs, len(epochs) - len(left), left, began))


PROGRESS_EVERY = 30.0  # seconds between cluster-wide progress lines


def zoo_progress(runs: Path, epochs: dict[str, int], finished: int, pending: set[str], since: float) -> str:
    """'models: 3 done, 2 running, 5 queued; ETA 40 min' from each pending model's progress.jsonl (shared with
    the driver through the runs folder). A model is running once it logged its start after `since`; its time per
    epoch is what it measured, and a queued model is assumed to take the mean of those."""
    remaining, running, per_epoch = [], 0, []
    for name in pending:
        started, epoch, seconds = _logged(runs / name / LOG_FILE, since)
        if epoch:
            per_epoch.append(seconds / epoch)
        if started:
            running += 1
            remaining.append((name, epochs[name] - epoch))
    mean = sum(per_epoch) / len(per_epoch) if per_epoch else None
    queued = len(pending) - running
    eta = None
    if mean is not None:
        work = sum(left for _, left in remaining) * mean + sum(
            epochs[n] for n in pending if n not in {r for r, _ in remaining}) * mean
        eta = work / max(1, running)
    return f"models: {finished} done, {running} running, {queued} queued; {cluster.eta_text(eta)}"


def _logged(log: Path, since: float) -> tuple[bool, int, float]:
    """(started after `since`, epochs done, training seconds) from a run's progress.jsonl."""
    started, epoch, seconds = False, 0, 0.0
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return started, epoch, seconds
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("event") == "start" and record.get("time", 0) >= since:
            started = True
        elif record.get("event") == "epoch":
            epoch, seconds = int(record.get("epoch", 0)), float(record.get("train_time_s", 0.0))
    return started, epoch, seconds


def _recipe_of(folder: Path) -> dict | None:
    return read_config(folder).get("recipe")


def export(src: Path, dst: Path, role: str = "", dtype: torch.dtype = torch.float16, label: str = "") -> dict:
    """Copy a finished checkpoint into the zoo at half precision, re-measuring accuracy on what ships."""
    model, config = load_model(src)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = {k: v for k, v in config.items() if k not in {"format", "format_version", "weights_dtype"}}
    save_checkpoint(model, tmp, extra=keep, dtype=dtype)
    shipped, _ = load_model(tmp)
    x, y = load_uint8(config["dataset"], "test")
    correct, n = accuracy(shipped, x, y)
    subset_correct, subset_n = accuracy(shipped, x[:CHECK_N], y[:CHECK_N])
    extra = {"clean_accuracy": correct / n, "clean_accuracy_n": n,
             f"clean_accuracy_first{CHECK_N}": subset_correct / subset_n,
             "clean_accuracy_ci95": list(wilson_interval(correct, n)),
             "clean_accuracy_fp32": config.get("clean_accuracy"), "role": role}
    if label and label != config["notation"]:
        extra["label"] = label  # reports name the model so; its notation alone would collide with another
    meta = json.loads((tmp / CONFIG_FILE).read_text())
    meta.update(extra)
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return meta
