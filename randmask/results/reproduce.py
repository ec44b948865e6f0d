"""`python -m randmask reproduce --preset quick`: rerun the paper's experiments on the shipped zoo, write
`results/*.csv` and a generated `REPRODUCTION.md` with the paper's numbers beside ours and a verdict per claim.

Every experiment names the zoo models it needs; one whose models are not trained yet is listed as pending in the
report instead of failing the run. Sample sizes are smaller than the paper's (see PRESETS); every number carries
n and a Wilson 95% interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from randmask.core import cluster
from randmask.core.errors import RandmaskError
from randmask.core.settings import PROJECT_ROOT, crafted_cache_root, exact_attacks
from randmask.experiments import protocols
from randmask.experiments.data import load_tensors
from randmask.experiments.evaluate import write_csv
from randmask.results.plan import (
    PRESETS,
    Experiment,
    StageProgress,
    TransferCells,
    experiments,
    record_run,
    recorded_runs,
)
from randmask.results.report import render_report
from randmask.results.zoo import ZOO_ROOT, Zoo

RENDER_ONLY = "nothing"  # `--only nothing`: run no experiment, re-render REPRODUCTION.md from results/*.csv


def reproduce(preset: str = "quick", zoo_root: Path | None = None, out: Path | None = None,
              only: list[str] | None = None, overrides: dict | None = None,
              progress: StageProgress | None = None, cache: Path | None | bool = True, jobs: int = 1,
              ray: str | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Run every experiment whose models exist; write results/<key>.csv and REPRODUCTION.md under `out`.

    Crafted adversarial sets are kept in `cache` (True: $RANDMASK_CRAFTED or runs/crafted; False/None: none) and
    reused while source, attack and images are unchanged, so a rerun after a new zoo model only evaluates it.
    With `ray` (an address, 'auto', or cluster.LOCAL) the experiments run as Ray tasks (RayPlan): a transfer
    table as one crafting task per attack and one evaluation task per target, every other experiment as one
    task; `say` hears the cluster's address and the cells done of total. `jobs` > 1 runs the same tasks on a
    local Ray cluster of that many CPUs, started for this run (bench/bench_ray.py: the process pool it replaced
    ran whole experiments, and lost to one process). Every experiment and cell seeds itself, so the results are
    those of a run in one process.
    """
    if preset not in PRESETS:
        raise RandmaskError(f"unknown reproduce preset {preset!r}; known: {', '.join(PRESETS)}")
    if jobs < 1:
        raise RandmaskError(f"jobs must be at least 1, not {jobs}")
    if ray is not None and jobs > 1:
        raise RandmaskError("give --ray or --jobs, not both: on Ray the cluster's CPUs set how many run at once")
    on_ray = ray is not None or jobs > 1
    if on_ray:
        cluster.require()  # without the extra: its one-line error, before anything is written
    settings = {**PRESETS[preset], **(overrides or {})}
    zoo_root = Path(zoo_root or ZOO_ROOT)
    zoo = Zoo(zoo_root)
    out = Path(out or PROJECT_ROOT)
    (out / "results").mkdir(parents=True, exist_ok=True)
    status: dict[str, dict] = {}
    if cache is True:
        cache = crafted_cache_root()
    every = experiments(settings, cache or None)
    if only and RENDER_ONLY in only and len(only) > 1:
        raise RandmaskError(f"'{RENDER_ONLY}' re-renders the report from results/ alone; give it without "
                            "experiment keys")
    unknown = [key for key in only or [] if key not in {exp.key for exp in every} | {RENDER_ONLY}]
    if unknown:
        raise RandmaskError(f"unknown experiment {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(exp.key for exp in every)}")
    plan = [exp for exp in every if not only or exp.key in only]
    ready: dict[str, Experiment] = {}
    for exp in plan:
        missing = [n for n in exp.needs if not zoo.has(n)]
        if missing:
            status[exp.key] = {"ran": False, "missing": missing}
        else:
            ready[exp.key] = exp
    if on_ray and ready:
        threads = 1
        done = _run_on_ray(list(ready), dict(settings), zoo_root, cache or None,
                           cluster.LOCAL if ray is None else ray, recorded_runs(out), say or (lambda line: None),
                           num_cpus=jobs if ray is None else None)
    else:
        x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
        threads = torch.get_num_threads()
        done = (_run_experiment(exp, zoo, x, y, (lambda d, t, k=exp.key: progress(k, d, t)) if progress else None)
                for exp in ready.values())
    for key, rows, seconds in done:
        write_csv(rows, out / "results" / f"{key}.csv")
        status[key] = {"ran": True, "rows": len(rows), "seconds": seconds,
                       "absent": [n for n in ready[key].wants if not zoo.has(n)]}
        record_run(out, key, {"attacks": "exact" if exact_attacks() else "fast", "preset": preset,
                              "seconds": seconds, "threads": threads, **({"jobs": jobs} if jobs > 1 else {}),
                              **({"ray": True} if on_ray else {})})
    status = {exp.key: status[exp.key] for exp in plan}  # plan order, whichever worker finished first
    report = render_report(out, settings, preset, status, zoo)
    (out / "REPRODUCTION.md").write_text(report)
    return status


def _run_experiment(exp: Experiment, zoo: Zoo, x: torch.Tensor, y: torch.Tensor,
                    progress: Callable[[int, int], None] | None) -> tuple[str, list[dict], float]:
    began = time.time()
    torch.manual_seed(0)
    rows = exp.run(zoo, x, y, progress)
    return exp.key, rows, round(time.time() - began, 1)


def _worker_run(key: str, settings: dict, zoo_root: Path, cache: Path | None,
                threads: int) -> tuple[str, list[dict], float]:
    """One whole experiment as a Ray task (one that is not a transfer table)."""
    torch.set_num_threads(threads)
    x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
    exp = next(e for e in experiments(settings, cache) if e.key == key)
    return _run_experiment(exp, Zoo(zoo_root), x, y, None)


def _cells_of(key: str, settings: dict, cache: Path | None) -> TransferCells:
    cells = next(e for e in experiments(settings, cache) if e.key == key).transfer
    if cells is None:
        raise RandmaskError(f"{key} is not a transfer experiment")
    return cells


def _craft_cell(key: str, attack: str, settings: dict, zoo_root: Path, cache: Path | None,
                threads: int) -> tuple[protocols.TransferSets, float]:
    """A transfer experiment's crafting of one attack, exactly as its run in one process crafts it (same images,
    seed and batch size, so the same fingerprint in the cache). Written atomically under a file lock
    (evaluate.craft): a worker killed mid-way leaves no set that a retry could read. The images that fool the
    source go to the evaluation cells through Ray's object store."""
    began = time.time()
    torch.set_num_threads(threads)
    cells = _cells_of(key, settings, cache)
    x, y = cells.images()
    torch.manual_seed(0)
    return cells.craft(Zoo(zoo_root), attack, x, y), time.time() - began


def _evaluate_cell(key: str, target: str, settings: dict, zoo_root: Path, cache: Path | None, threads: int,
                   *crafted: tuple[protocols.TransferSets, float]) -> tuple[str, protocols.TargetRows | dict, float]:
    """A transfer experiment's evaluation of one target (a zoo name) on every set its crafting cells made
    (`crafted`, their results in attack order): (its label, its rows, seconds). The source, as target, gives
    its clean-accuracy row."""
    began = time.time()
    torch.set_num_threads(threads)
    cells, zoo = _cells_of(key, settings, cache), Zoo(zoo_root)
    x, y = cells.images()
    sets = protocols.TransferSets.join([part for part, _ in crafted])
    torch.manual_seed(0)
    if target == cells.source:
        row = protocols.clean_row(sets, cells.source_name, zoo.model(target), x, y, cache=cache)
        return cells.source_name, row, time.time() - began
    label = zoo.label(target)
    return label, protocols.transfer_target(sets, label, zoo.model(target), x, y, cache=cache), time.time() - began


class RayPlan:
    """A reproduce run's cells as Ray jobs: a transfer experiment (plan.TransferCells) as one crafting job per
    attack and one evaluation job per target present (plus one for the source's clean accuracy), after its
    crafting jobs; every other experiment as one job. `collect` turns the finished jobs back into experiments,
    a transfer's rows assembled by protocols.transfer_rows as its run in one process assembles them."""

    def __init__(self, keys: list[str], settings: dict, zoo_root: Path, cache: Path | None,
                 runs: dict[str, dict]) -> None:
        zoo, by_key = Zoo(zoo_root), {e.key: e for e in experiments(settings, cache)}
        self.jobs: list[cluster.Job] = []
        self.cells: dict[str, list[str]] = {}  # experiment: its jobs' keys
        self.evaluations: dict[str, list[str]] = {}  # transfer experiment: its evaluation jobs, in target order
        # longest first (by the last recorded time; unknown ones first): the workers stay busy to the end
        for key in sorted(keys, key=lambda k: -(runs.get(k, {}).get("seconds") or math.inf)):
            cells = by_key[key].transfer
            if cells is None:
                self._add(key, cluster.Job(key, _worker_run, (key, settings, zoo_root, cache, 1)))
                continue
            crafts = [self._add(key, cluster.Job(f"{key}: craft {attack}", _craft_cell,
                                                 (key, attack, settings, zoo_root, cache, 1)))
                      for attack in cells.attacks]
            evaluated = ([cells.source] if cells.options.get("clean", True) else []) + cells.present(zoo)
            self.evaluations[key] = [
                self._add(key, cluster.Job(f"{key}: {'clean accuracy of' if name == cells.source else 'evaluate'} "
                                           f"{name}", _evaluate_cell, (key, name, settings, zoo_root, cache, 1),
                                           after=crafts))
                for name in evaluated]
        self.experiment_of = {job: key for key, jobs in self.cells.items() for job in jobs}

    def _add(self, key: str, job: cluster.Job) -> str:
        self.jobs.append(job)
        self.cells.setdefault(key, []).append(job.key)
        return job.key

    def collect(self, finished: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, list[dict], float]]:
        """(experiment key, rows, seconds) for each experiment whose jobs have all finished, from the (job key,
        result) pairs of cluster.run. A transfer's seconds: the sum of its jobs' own."""
        seconds: dict[str, float] = {}
        evaluated: dict[str, tuple[str, protocols.TargetRows | dict]] = {}
        for job, result in finished:
            key = self.experiment_of[job]
            if key not in self.evaluations:  # a whole experiment in one job
                yield result
                continue
            seconds[job] = result[-1]  # a crafting job's sets are not kept here: its evaluation jobs have them
            if job in self.evaluations[key]:
                evaluated[job] = result[:2]
            if all(j in seconds for j in self.cells[key]):
                source_clean, by_target = None, {}
                for label, rows in (evaluated.pop(j) for j in self.evaluations[key]):
                    if isinstance(rows, dict):
                        source_clean = rows
                    else:  # as the targets' dict in one process: a label twice has the last one's rows
                        by_target[label] = rows
                total = sum(seconds.pop(j) for j in self.cells[key])
                yield key, protocols.transfer_rows(by_target, source_clean), round(total, 1)


def _run_on_ray(keys: list[str], settings: dict, zoo_root: Path, cache: Path | None, address: str,
                runs: dict[str, dict], say: Callable[[str], None],
                num_cpus: int | None = None) -> Iterator[tuple[str, list[dict], float]]:
    started = not cluster.connected()
    say(cluster.connect(address, num_cpus=num_cpus))
    try:
        yield from _ray_cells(keys, settings, zoo_root, cache, runs, say)
    finally:
        if started:  # a cluster this run started (or joined) ends with it
            cluster.shutdown()


def _ray_cells(keys: list[str], settings: dict, zoo_root: Path, cache: Path | None, runs: dict[str, dict],
               say: Callable[[str], None]) -> Iterator[tuple[str, list[dict], float]]:
    plan = RayPlan(keys, settings, zoo_root, cache, runs)
    began, finished, experiments_done = time.time(), 0, 0

    def line() -> str:
        return (f"cells: {finished} of {len(plan.jobs)} done ({experiments_done} of {len(keys)} experiments), "
                f"{time.time() - began:.0f} s")

    def counted(results: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        nonlocal finished
        for result in results:
            finished += 1
            yield result

    say(line())
    for result in plan.collect(counted(cluster.run(plan.jobs, tick=lambda done, pending: say(line()), every=30.0))):
        experiments_done += 1
        say(line())
        yield result
