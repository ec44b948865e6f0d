"""`python -m randmask reproduce --preset quick`: rerun the paper's experiments on the shipped zoo, write
`results/*.csv` and a generated `REPRODUCTION.md` with the paper's numbers beside ours and a verdict per claim.

Every experiment names the zoo models it needs; one whose models are not trained yet is listed as pending in the
report instead of failing the run. Sample sizes are smaller than the paper's (see PRESETS); every number carries
n and a Wilson 95% interval.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from randmask import cluster, protocols
from randmask.data import load_tensors
from randmask.errors import RandmaskError
from randmask.evaluate import write_csv
from randmask.plan import (
    PRESETS,
    TRANSFER_SOURCES,
    Experiment,
    StageProgress,
    experiments,
    record_run,
    recorded_runs,
    transfer_attacks,
)
from randmask.report import render_report
from randmask.settings import PROJECT_ROOT, crafted_cache_root, exact_attacks
from randmask.zoo import ZOO_ROOT, Zoo

RENDER_ONLY = "nothing"  # `--only nothing`: run no experiment, re-render REPRODUCTION.md from results/*.csv


def reproduce(preset: str = "quick", zoo_root: Path | None = None, out: Path | None = None,
              only: list[str] | None = None, overrides: dict | None = None,
              progress: StageProgress | None = None, cache: Path | None | bool = True, jobs: int = 1,
              ray: str | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Run every experiment whose models exist; write results/<key>.csv and REPRODUCTION.md under `out`.

    Crafted adversarial sets are kept in `cache` (True: $RANDMASK_CRAFTED or runs/crafted; False/None: none) and
    reused while source, attack and images are unchanged, so a rerun after a new zoo model only evaluates it.
    `jobs` > 1 runs that many experiments at once in worker processes, sharing this process's torch threads
    (at least one each), longest first by the times results/runs.json recorded; every experiment seeds itself,
    so the results do not depend on `jobs`.

    With `ray` (an address, 'auto', or cluster.LOCAL) the experiments run as Ray tasks instead, each transfer
    table's crafting as one task per attack first (into `cache`, which the cluster's nodes must share); `say`
    hears the cluster's address and the cells done of total. The results are those of a run in one process.
    """
    if preset not in PRESETS:
        raise RandmaskError(f"unknown reproduce preset {preset!r}; known: {', '.join(PRESETS)}")
    if jobs < 1:
        raise RandmaskError(f"jobs must be at least 1, not {jobs}")
    if ray is not None and jobs > 1:
        raise RandmaskError("give --ray or --jobs, not both: on Ray the cluster's CPUs set how many run at once")
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
    if ray is not None and ready:
        threads = 1
        done = _run_on_ray(list(ready), dict(settings), zoo_root, cache or None, ray, recorded_runs(out),
                           say or (lambda line: None))
    elif jobs > 1 and len(ready) > 1:
        threads = max(1, torch.get_num_threads() // jobs)
        done = _run_in_workers(list(ready), dict(settings), zoo_root, cache or None, jobs, threads,
                               recorded_runs(out), progress)
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
                              **({"ray": True} if ray is not None else {})})
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
                threads: int, *crafted: str) -> tuple[str, list[dict], float]:
    """One experiment in a worker process (spawned: it inherits the environment, RANDMASK_EXACT included). On Ray,
    `crafted` are the results of its crafting cells: passing them makes Ray start it once they are in the cache."""
    torch.set_num_threads(threads)
    x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
    exp = next(e for e in experiments(settings, cache) if e.key == key)
    return _run_experiment(exp, Zoo(zoo_root), x, y, None)


def _run_in_workers(keys: list[str], settings: dict, zoo_root: Path, cache: Path | None, jobs: int, threads: int,
                    runs: dict[str, dict], progress: StageProgress | None) -> Iterator[tuple[str, list[dict], float]]:
    # longest first (by the last recorded time; unknown ones first) keeps the workers busy to the end
    keys = sorted(keys, key=lambda k: -(runs.get(k, {}).get("seconds") or math.inf))
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = [pool.submit(_worker_run, key, settings, zoo_root, cache, threads) for key in keys]
        for key in keys:
            if progress:
                progress(key, 0, 1)
        for future in as_completed(pending):
            key, rows, seconds = future.result()
            if progress:
                progress(key, 1, 1)
            yield key, rows, seconds
    finally:  # on an error (or Ctrl-C) the experiments not started yet are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def _craft_cell(source: str, source_name: str, attack: str, settings: dict, zoo_root: Path, cache: Path,
                threads: int) -> str:
    """One transfer table's crafting for one attack, into the cache, exactly as the table's own run crafts it
    (same images, seed and batch size, so the same fingerprint): the table then only reads it. Written atomically
    under a file lock (evaluate.craft): a worker killed mid-way leaves no set that a retry or the table could read."""
    torch.set_num_threads(threads)
    x, y = load_tensors("cifar10", "test", n=settings.get("n_pool"))
    torch.manual_seed(0)
    protocols.transfer(Zoo(zoo_root).model(source), {}, [attack], x, y, source_name=source_name, n=settings["n"],
                       n_cw=settings["n_cw"], dataset="cifar10", cache=cache, clean=False)
    return attack


def ray_jobs(keys: list[str], settings: dict, zoo_root: Path, cache: Path | None,
             runs: dict[str, dict]) -> list[cluster.Job]:
    """The cells of a reproduce run as Ray jobs: with a cache, one crafting job per transfer source and attack;
    then one job per experiment (after its crafting jobs), longest first as `--jobs` orders them."""
    zoo, jobs = Zoo(zoo_root), []
    sources = {key: (source, name) for key, _, source, name, _ in TRANSFER_SOURCES}
    keys = sorted(keys, key=lambda k: -(runs.get(k, {}).get("seconds") or math.inf))
    crafts: dict[str, list[str]] = {}
    for key in keys:
        if cache is None or key not in sources or not zoo.has(sources[key][0]):
            continue
        source, name = sources[key]
        for attack in transfer_attacks(settings):
            crafts.setdefault(key, []).append(f"craft {name} {attack}")
            jobs.append(cluster.Job(crafts[key][-1], _craft_cell, (source, name, attack, settings, zoo_root, cache, 1)))
    jobs += [cluster.Job(key, _worker_run, (key, settings, zoo_root, cache, 1), after=crafts.get(key, ()))
             for key in keys]
    return jobs


def _run_on_ray(keys: list[str], settings: dict, zoo_root: Path, cache: Path | None, address: str,
                runs: dict[str, dict], say: Callable[[str], None]) -> Iterator[tuple[str, list[dict], float]]:
    say(cluster.connect(address))
    jobs = ray_jobs(keys, settings, zoo_root, cache, runs)
    experiments_left = set(keys)
    began, finished = time.time(), 0

    def line() -> str:
        return (f"cells: {finished} of {len(jobs)} done ({len(keys) - len(experiments_left)} of {len(keys)} "
                f"experiments), {time.time() - began:.0f} s")

    say(line())
    for key, result in cluster.run(jobs, tick=lambda done, pending: say(line()), every=30.0):
        finished += 1
        if key in experiments_left:
            experiments_left.discard(key)
            say(line())
            yield result
