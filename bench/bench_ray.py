"""Reproduce on a local Ray cluster against one process, cold (an empty crafted-set cache each time).

    python bench/bench_ray.py [--only table11_transfer table3_shuffle] [--scale 0.05] [--tasks 20]
                              [--ways single ray]

Runs the quick preset's experiments named by --only on the shipped zoo (assets/zoo), with the preset's sample
sizes times --scale (1 = the quick preset itself), each way in turn in a fresh process with a fresh cache:
`reproduce` in one process (torch's threads) and `--ray` (a local Ray cluster of every CPU, started by the run:
what `--jobs N` runs too, with N CPUs). Printed per way: wall time (process start to exit, Python start-up
included), the run's own wall time and each experiment's seconds (on Ray: the sum of its tasks' own); for Ray
also the cluster's start-up and its overhead per task, measured on the same kind of local cluster as the wall
time of --tasks no-op tasks run one after the other, divided by their number. Each way's results must be the
same (n and count correct on every row): the bench says so, or stops.

The process pool `--jobs 2` used to be (whole experiments in two one-thread workers) is gone: on an Intel Xeon
(AMX, 2 cores, quiet) with these defaults it took 703.1 s against one process's 481.3 s and Ray's 360.4 s,
since Table 11 is nearly all of the work and the pool could not split it (at 6229537; README "Run on a
cluster" has a second run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("single", "ray")

RUN = """
import json, sys, time
from pathlib import Path
began = time.perf_counter()
from randmask.results.plan import PRESETS
from randmask.results.reproduce import reproduce
only, scale, out, mode = json.loads(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
quick = PRESETS["quick"]
overrides = {k: max(1, round(v * scale)) for k, v in quick.items() if k.startswith("n") and isinstance(v, int)}
said = []
status = reproduce("quick", out=out, only=only, overrides=overrides, cache=out / "crafted",
                   ray="" if mode == "ray" else None, say=said.append)
print(json.dumps({"run_s": time.perf_counter() - began, "status": status, "said": said}))
"""

OVERHEAD = """
import json, sys, time
began = time.perf_counter()
from randmask.core import cluster
cluster.connect(cluster.LOCAL)
up = time.perf_counter() - began
def noop(i):
    return i
jobs = [cluster.Job(f"noop {i}", noop, (i,)) for i in range(int(sys.argv[1]))]
start = time.perf_counter()
for job in jobs:  # one after the other: the round trip of a task, not the cluster's throughput
    list(cluster.run([job]))
print(json.dumps({"startup_s": up, "per_task_s": (time.perf_counter() - start) / len(jobs)}))
"""


def _python(code: str, *args: str) -> tuple[dict, float]:
    began = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=["table11_transfer", "table3_shuffle"])
    parser.add_argument("--scale", type=float, default=0.05, help="times the quick preset's sample sizes")
    parser.add_argument("--tasks", type=int, default=20, help="no-op tasks for Ray's overhead per task")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS, help="which ways to run, in turn")
    args = parser.parse_args()
    import pandas as pd

    print(f"reproduce --preset quick --only {' '.join(args.only)}, sample sizes x{args.scale}, cold; "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the start")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.ways:
            out = Path(tmp) / mode
            report, wall = _python(RUN, json.dumps(args.only), str(args.scale), str(out), mode)
            results[mode] = {key: pd.read_csv(out / "results" / f"{key}.csv")[["n", "correct"]]
                             for key in args.only if (out / "results" / f"{key}.csv").exists()}
            cells = next((line for line in reversed(report["said"]) if line.startswith("cells:")), "")
            print(f"{mode:>7}: {wall:7.1f} s wall ({report['run_s']:.1f} s in the run){'; ' + cells if cells else ''}")
            print(" " * 9 + ", ".join(f"{key} {st['seconds']:.1f} s" for key, st in report["status"].items()
                                      if st.get("ran")))
        first = results[args.ways[0]]
        same = all(results[m].keys() == first.keys() and all(results[m][k].equals(first[k]) for k in first)
                   for m in results)
        if not same:
            sys.exit(f"the ways {', '.join(args.ways)} gave different results")
        print(f"results: the same n and count correct on every row of {', '.join(first)} ({', '.join(args.ways)})")
        if "ray" not in args.ways:
            return
        overhead, _ = _python(OVERHEAD, str(args.tasks))
        print(f"Ray local cluster: {overhead['startup_s']:.1f} s to start; {1000 * overhead['per_task_s']:.0f} ms "
              f"a task (round trip of {args.tasks} no-op tasks, one at a time)")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
