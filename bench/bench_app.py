"""App benchmarks, printed as measured / target ratios (below 1 is within target).

    python -m bench.bench_app                 # all three (a module: it shares the browser tests' launcher)
    python -m bench.bench_app --only gallery  # gallery | switch | memory

- gallery: building the adversarial gallery of 8 PGD16 images (against Normal ResNet-18 and 0.9-Shallow, both
  attacked, as the page does) on the quick zoo; target 3 s on the 2-core lab machine (issue 17).
- switch: warm page switch in a real browser (headless Chromium): click a page in the sidebar, wait until its
  title shows and the run has finished; every page visited once before (warm caches). Target 2 s.
- memory: resident memory of one process holding Streamlit, plotly, pandas, the test images and every model the
  picker offers (the whole quick zoo, or its untrained stand-ins of the same size); target 2 GiB.

Without a trained zoo in assets/zoo (or $RANDMASK_ZOO) the untrained width-16 stand-ins are used: the same
networks, so the same cost; the output says which.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("RANDMASK_BENCH_NO_OMP_POLICY"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py sets it, before torch loads OpenMP

from tests.streamlit_server import streamlit_server  # noqa: E402  (run as a module from the checkout)

GALLERY_TARGET_S, SWITCH_TARGET_S, MEMORY_TARGET_GIB = 3.0, 2.0, 2.0
# a fresh process of this benchmark, run as a module from the checkout (as a script, `tests` would not import)
BENCH_COMMAND = (sys.executable, "-m", "bench.bench_app")


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

    from randmask import catalog, gallery
    from randmask.data import load_test_sample

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
    with streamlit_server(ROOT / "app.py") as url:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.get_by_role("heading", name="Random Mask, hands on", level=1).wait_for()
            nav = page.locator('[data-testid="stSidebarNav"]')
            results: dict[str, list[float]] = {title: [] for title, _ in pages}
            for round_ in range(rounds + 1):  # round 0 warms every page (model loads, caches)
                for link, heading in pages:
                    page.wait_for_function(idle, polling="raf")
                    began = time.perf_counter()
                    nav.get_by_text(link, exact=True).click()
                    page.get_by_role("heading", name=heading, level=1).wait_for()
                    page.wait_for_timeout(50)  # the status widget appears a moment after the click
                    page.wait_for_function(idle, polling="raf")
                    if round_:
                        results[link].append(time.perf_counter() - began)
            browser.close()
    worst = 0.0
    for link, times in results.items():
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"switch   → {link:<20} median {median:.2f} s over {len(times)} (includes a 50 ms settle wait)")
    print(f"switch   slowest page median {worst:.2f} s / target {SWITCH_TARGET_S:.0f} s = {worst / SWITCH_TARGET_S:.2f}")


def bench_memory() -> None:
    import pandas  # noqa: F401  (what the app imports)
    import plotly.graph_objects  # noqa: F401
    import streamlit  # noqa: F401

    from randmask import catalog
    from randmask.data import load_test_sample

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
    medians = {}
    for policy in ("unset", "ACTIVE", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "unset":
            env["OMP_WAIT_POLICY"] = policy
        else:
            env["RANDMASK_BENCH_NO_OMP_POLICY"] = "1"
        out = subprocess.run([*BENCH_COMMAND, "--only", "gallery", "--repeats", str(repeats)],
                             env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT).stdout
        line = next(x for x in out.splitlines() if "median" in x)
        medians[policy] = float(line.split("median ")[1].split(" s")[0])
        print(f"OMP_WAIT_POLICY={policy:<7} {line}")
    print(f"gallery  unset (libgomp default) / PASSIVE = {medians['unset'] / medians['PASSIVE']:.1f}×, "
          f"ACTIVE / PASSIVE = {medians['ACTIVE'] / medians['PASSIVE']:.1f}× (load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["gallery", "switch", "memory"])
    parser.add_argument("--repeats", type=int, default=3, help="gallery builds to time")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds over all pages")
    parser.add_argument("--compare-omp", action="store_true",
                        help="time the gallery with OpenMP threads spinning (ACTIVE) and sleeping (PASSIVE, app.py's "
                             "setting), side by side in fresh processes")
    args = parser.parse_args()
    if args.compare_omp:
        compare_omp(args.repeats)
        return
    from randmask.device import cpu_model

    print(f"machine: {cpu_model()}; load average {os.getloadavg()[0]:.1f} (other jobs slow these numbers); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    if args.only in (None, "memory"):
        bench_memory()
    if args.only in (None, "gallery"):
        bench_gallery(args.repeats)
    if args.only in (None, "switch"):
        bench_switch(args.rounds)


if __name__ == "__main__":
    main()
