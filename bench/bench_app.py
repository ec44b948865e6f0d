"""App benchmarks, printed as measured / target ratios (below 1 is within target).

    python -m bench.bench_app                 # all three (a module: it shares the browser tests' launcher)
    python -m bench.bench_app --only gallery  # gallery | switch | memory | first

- gallery: building the adversarial gallery of 8 PGD16 images (against Normal ResNet-18 and 0.9-Shallow, both
  attacked, as the page does) on the quick zoo; target 3 s on the 2-core lab machine (issue 17).
- switch: warm page switch in a real browser (headless Chromium): click a page in the sidebar, wait until its
  title shows and the run has finished; every page visited once before (warm caches). Target 1 s. Also Home in a
  new browser session on the warm server (a new visitor): target 2 s. Each with the server's CPU time.
- first (fast first steps, issue 33): train start -> first training step, the Train page's job command
  (`python -m randmask train 0.7-Shallow --preset quick --epochs 3 --eval-n 1000`), from the process start to its
  first step record, with when each stage began; twice: on a machine that has not measured the precision probe
  yet, then as every later run (the probe's answer stored). Target 15 s. Then Home and the page switches as in
  `switch`.
Wall times include every other process on the machine; CPU times (the process's own, all threads) are printed
beside them because a loaded machine stretches the first, hardly the second.
- memory: resident memory of one process holding Streamlit, plotly, pandas, the test images and every model the
  picker offers (the whole quick zoo, or its untrained stand-ins of the same size); target 2 GiB.

Without a trained zoo in assets/zoo (or $RANDMASK_ZOO) the untrained width-16 stand-ins are used: the same
networks, so the same cost; the output says which.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("RANDMASK_BENCH_NO_OMP_POLICY"):
    from randmask.core.settings import apply_openmp_wait_policy

    apply_openmp_wait_policy()  # as app.py does, before torch loads OpenMP

from tests.streamlit_server import streamlit_server_process  # noqa: E402  (run as a module from the checkout)

GALLERY_TARGET_S, SWITCH_TARGET_S, HOME_TARGET_S, MEMORY_TARGET_GIB, TRAIN_START_TARGET_S = 3.0, 1.0, 2.0, 2.0, 15.0
# a fresh process of this benchmark, run as a module from the checkout (as a script, `tests` would not import)
BENCH_COMMAND = (sys.executable, "-m", "bench.bench_app")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def pick(catalog, notation: str):
    same = [e for e in catalog.entries if e.notation == notation and e.dataset == "cifar10" and not e.seed
            and not e.mask_seed]
    same.sort(key=lambda e: ("zoo", "user", "untrained").index(e.source))
    return same[0]


def bench_gallery(repeats: int) -> None:
    import torch

    from randmask.experiments.data import load_test_sample
    from randmask.views import catalog, gallery

    found = catalog.discover_models()
    normal, masked = pick(found, "Normal ResNet-18"), pick(found, "0.9-Shallow")
    models = [catalog.load_entry(e) for e in (normal, masked)]
    x, y = load_test_sample("cifar10", 8)
    x = x.float().div(255)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        gallery.build_gallery(models[0], models[1], "PGD16", x, y, names=(normal.name, masked.name))
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    print(f"gallery  8 × PGD16 (20 steps) against {normal.label} and {masked.label}; torch threads "
          f"{torch.get_num_threads()}; runs {', '.join(f'{t:.2f}' for t in times)} s")
    print(f"gallery  median {median:.2f} s / target {GALLERY_TARGET_S:.0f} s = {median / GALLERY_TARGET_S:.2f}")


def bench_switch(rounds: int) -> None:
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("switch   skipped: playwright is not installed")
        return
    if not chromium.exists():
        print("switch   skipped: /usr/bin/chromium is missing (apt-get install chromium)")
        return
    pages = [("Mask patterns", "Mask patterns"), ("Patch shuffle", "Patch shuffle"), ("Noise curves", "Noise curves"),
             ("Adversarial gallery", "Adversarial gallery"), ("Robustness explorer", "Robustness explorer"),
             ("Train", "Train a model"), ("Home", "Random Mask, hands on")]
    idle = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
    home_times: list[tuple[float, float]] = []
    with streamlit_server_process(ROOT / "app.py") as (url, server):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])

            def open_home(timed: bool):
                wall, cpu = time.perf_counter(), cpu_seconds(server.pid)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(600_000)
                page.goto(url)
                page.get_by_role("heading", name="Random Mask, hands on", level=1).wait_for()
                page.wait_for_timeout(50)
                page.wait_for_function(idle, polling="raf")
                if timed:
                    home_times.append((time.perf_counter() - wall, cpu_seconds(server.pid) - cpu))
                return page

            page = open_home(False)
            nav = page.locator('[data-testid="stSidebarNav"]')
            results: dict[str, list[tuple[float, float]]] = {title: [] for title, _ in pages}
            for round_ in range(rounds + 1):  # round 0 warms every page (model loads, caches)
                for link, heading in pages:
                    page.wait_for_function(idle, polling="raf")
                    began, cpu = time.perf_counter(), cpu_seconds(server.pid)
                    nav.get_by_text(link, exact=True).click()
                    page.get_by_role("heading", name=heading, level=1).wait_for()
                    page.wait_for_timeout(50)  # the status widget appears a moment after the click
                    page.wait_for_function(idle, polling="raf")
                    if round_:
                        results[link].append((time.perf_counter() - began, cpu_seconds(server.pid) - cpu))
                if round_:  # a new visitor on the warm server
                    open_home(True).close()
            browser.close()
    worst, worst_cpu = 0.0, 0.0
    for link, times in results.items():
        median = statistics.median(t for t, _ in times)
        cpu = statistics.median(c for _, c in times)
        worst, worst_cpu = max(worst, median), max(worst_cpu, cpu)
        print(f"switch   → {link:<20} median {median:.2f} s, server CPU {cpu:.2f} s over {len(times)} "
              "(includes a 50 ms settle wait)")
    home = statistics.median(t for t, _ in home_times)
    home_cpu = statistics.median(c for _, c in home_times)
    print(f"home     new session on the warm server: median {home:.2f} s, server CPU {home_cpu:.2f} s over "
          f"{len(home_times)} / target {HOME_TARGET_S:.0f} s = {home / HOME_TARGET_S:.2f}")
    print(f"switch   slowest page median {worst:.2f} s (server CPU {worst_cpu:.2f} s) / target {SWITCH_TARGET_S:.0f} s"
          f" = {worst / SWITCH_TARGET_S:.2f}")


def train_start(folder: Path, env: dict[str, str]) -> tuple[float, float, list[tuple[str, float]]]:
    """(wall s, CPU s) from starting the Train page's job command to its first step record, and when each stage
    began (s after the start); the run is stopped there."""
    from randmask.views.jobs import JobSettings

    command = JobSettings(notation="0.7-Shallow", preset="quick", dataset="cifar10", epochs=3,
                          eval_n=1000).command(folder)
    log = folder / "progress.jsonl"
    began = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            cpu = cpu_seconds(process.pid)
            records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if any(r["event"] == "step" for r in records):
                break
            if process.poll() is not None:
                raise SystemExit(f"train start: the job ended before its first step: {process.stderr.read()[-500:]}")
            time.sleep(0.05)
    finally:
        process.kill()  # SIGTERM would wait for the step under way (minutes on a loaded machine)
        process.wait(timeout=60)
    first = next(r for r in records if r["event"] == "step")
    stages = [(r["what"], r["time"] - began) for r in records if r["event"] == "stage"]
    return first["time"] - began, cpu, [*stages, (f"step {first['step']} done", first["time"] - began)]


def bench_train_start() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RANDMASK_PRECISION_CACHE": str(Path(tmp) / "probes.json")}
        for when in ("first run on this machine", "a later run"):
            wall, cpu, stages = train_start(Path(tmp) / when.replace(" ", "-"), env)
            print(f"train    {when}: " + ", ".join(f"{what} at {t:.1f}" for what, t in stages))
            print(f"train    start -> first step ({when}): {wall:.2f} s, CPU {cpu:.2f} s / target "
                  f"{TRAIN_START_TARGET_S:.0f} s = {wall / TRAIN_START_TARGET_S:.2f}")


def bench_memory() -> None:
    import pandas  # noqa: F401  (what the app imports)
    import plotly.graph_objects  # noqa: F401
    import streamlit  # noqa: F401

    from randmask.experiments.data import load_test_sample
    from randmask.views import catalog

    before = rss_gib()
    load_test_sample("cifar10", 1000)
    found = catalog.discover_models()
    entries = [e for e in found.entries if e.trained] or found.entries
    models = [catalog.load_entry(e) for e in entries]
    kind = "trained zoo/user models" if entries[0].trained else "untrained stand-ins (zoo not trained yet)"
    total = rss_gib()
    print(f"memory   {len(models)} {kind} + 1000 test images: RSS {total:.2f} GiB (imports alone {before:.2f} GiB)")
    print(f"memory   {total:.2f} GiB / target {MEMORY_TARGET_GIB:.0f} GiB = {total / MEMORY_TARGET_GIB:.2f}")


def compare_omp(repeats: int) -> None:
    from randmask.core.settings import OPENMP_BOUNDED_SPIN, OPENMP_WAIT_VARIABLES

    medians = {}
    policies = {"unset": {}, "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
                "ours": dict(OPENMP_BOUNDED_SPIN)}
    for policy, extra in policies.items():
        # this process set randmask's spin in its own environment: each child gets only its policy's variables
        env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
        env.update(extra, RANDMASK_BENCH_NO_OMP_POLICY="1")
        out = subprocess.run([*BENCH_COMMAND, "--only", "gallery", "--repeats", str(repeats)],
                             env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT).stdout
        line = next(x for x in out.splitlines() if "median" in x)
        medians[policy] = float(line.split("median ")[1].split(" s")[0])
        print(f"OpenMP waits {policy:<7} {' '.join(f'{k}={v}' for k, v in extra.items()) or '(libgomp default)'}: "
              f"{line}")
    print(f"gallery  unset (libgomp default) / PASSIVE = {medians['unset'] / medians['PASSIVE']:.1f}×, "
          f"ACTIVE / PASSIVE = {medians['ACTIVE'] / medians['PASSIVE']:.1f}×, ours / PASSIVE = "
          f"{medians['ours'] / medians['PASSIVE']:.1f}× (load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["gallery", "switch", "memory", "first"])
    parser.add_argument("--repeats", type=int, default=3, help="gallery builds to time")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds over all pages")
    parser.add_argument("--compare-omp", action="store_true",
                        help="time the gallery with OpenMP threads spinning (ACTIVE), sleeping (PASSIVE), libgomp's "
                             "default and randmask's short spin, side by side in fresh processes")
    args = parser.parse_args()
    if args.compare_omp:
        compare_omp(args.repeats)
        return
    from randmask.core.device import cpu_model
    from randmask.core.settings import openmp_wait_note

    print(f"machine: {cpu_model()}; load average {os.getloadavg()[0]:.1f} (other jobs slow these numbers); "
          f"{openmp_wait_note()}")
    if args.only in (None, "memory"):
        bench_memory()
    if args.only in (None, "gallery"):
        bench_gallery(args.repeats)
    if args.only in (None, "first"):
        bench_train_start()
    if args.only in (None, "switch", "first"):
        bench_switch(args.rounds)


if __name__ == "__main__":
    main()
