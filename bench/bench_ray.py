"""Reproduce on Ray against one process and against `--jobs 2`, cold (an empty crafted-set cache each time).

    python bench/bench_ray.py [--only table11_transfer table3_shuffle] [--scale 0.1] [--tasks 20]

Runs the quick preset's experiments named by --only on the shipped zoo (assets/zoo), with the preset's sample
sizes times --scale (1 = the quick preset itself), three ways in turn, each in a fresh process with a fresh cache:
`reproduce` in one process, `--jobs 2` (a process pool of two) and `--ray` (a local Ray cluster started by the
run). Printed per way: wall time (process start to exit, Python start-up included) and the run's own wall time;
for Ray also the cluster's start-up and its overhead per task, measured on the same kind of local cluster as the
wall time of --tasks no-op tasks run one after the other, divided by their number. Each way's results must be
the same (n and count correct on every row): the bench says so, or stops.
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
                   jobs=2 if mode == "jobs2" else 1, ray="" if mode == "ray" else None, say=said.append)
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
    parser.add_argument("--scale", type=float, default=0.1, help="times the quick preset's sample sizes")
    parser.add_argument("--tasks", type=int, default=20, help="no-op tasks for Ray's overhead per task")
    args = parser.parse_args()
    import pandas as pd

    print(f"reproduce --preset quick --only {' '.join(args.only)}, sample sizes x{args.scale}, cold; "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the start")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("single", "jobs2", "ray"):
            out = Path(tmp) / mode
            report, wall = _python(RUN, json.dumps(args.only), str(args.scale), str(out), mode)
            results[mode] = {key: pd.read_csv(out / "results" / f"{key}.csv")[["n", "correct"]]
                             for key in args.only if (out / "results" / f"{key}.csv").exists()}
            cells = next((line for line in reversed(report["said"]) if line.startswith("cells:")), "")
            print(f"{mode:>7}: {wall:7.1f} s wall ({report['run_s']:.1f} s in the run){'; ' + cells if cells else ''}")
        same = all(results[m].keys() == results["single"].keys()
                   and all(results[m][k].equals(results["single"][k]) for k in results["single"])
                   for m in results)
        if not same:
            sys.exit("the three ways gave different results")
        print(f"results: the same n and count correct on every row of {', '.join(results['single'])}")
        overhead, _ = _python(OVERHEAD, str(args.tasks))
        print(f"Ray local cluster: {overhead['startup_s']:.1f} s to start; {1000 * overhead['per_task_s']:.0f} ms "
              f"a task (round trip of {args.tasks} no-op tasks, one at a time)")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
