"""The participant server under real browsers: N participants label at a human pace in headless Chromium.

    python bench/bench_study_server.py [--participants 1 10 25] [--answers 20] [--think-ms 1200 2400]

Starts the real participant server (`python -m study serve`) on a fresh study (random-pixel images: only
sizes matter), then for each N drives N participants at once (consent, instructions, then ANSWERS images,
each after a random pause in THINK-MS) and prints, per N:
  - server CPU ms per stored answer, from the server process's own CPU time (/proc/<pid>/stat), for the whole
    run (page loads and consents included) and for the answering phase alone;
  - click -> next image latency p50/p95 as the browser sees it (the widget's performance.now() log: answer
    time to the first frame showing the next image);
  - answers lost (clicked but not stored) and duplicated (stored more than once);
  - server RSS at the end.
Needs Debian's chromium at /usr/bin/chromium and the playwright package.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from study import StudyConfig, create_study, get_study, open_db
from study.sets import write_set

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build(root: Path, answers: int, capacity: int) -> tuple[Path, str]:
    """A 2-condition study with `answers` trials per participant (2 of them catch trials), no practice, and
    room for `capacity` participants."""
    per_condition = answers // 2 - 1
    images = max(per_condition, capacity * per_condition)  # k = 1: every participant gets fresh images
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=images)
    folders = []
    for c in range(2):
        rows = [{"index": i, "true_label": int(labels[i]), "source": f"model{c}", "attack": "PGD16",
                 "source_pred": int((labels[i] + 1) % 10), "linf": 0.06, "l2": 1.0} for i in range(images)]
        folders.append(write_set(root / f"c{c}", rows, list(pixels)))
    # catch images: the last 20 test-set positions (sets must name real CIFAR-10 test images), none shared
    if images > 10_000 - 20:
        raise SystemExit(f"{images} images per condition leave no room for the catch set; use fewer participants")
    catch = [{"index": 9_999 - i, "true_label": 0, "source": "", "attack": "clean", "source_pred": "", "linf": 0,
              "l2": 0} for i in range(20)]
    write_set(root / "catch", catch, list(rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)))
    db_path = root / "bench.db"
    db = open_db(db_path)
    create_study(db, StudyConfig(slug="bench", labels_per_item=1, items_per_participant=2 * per_condition,
                                 catch_per_participant=2), folders, root / "catch")
    key = get_study(db, "bench").link_key
    db.close()
    return db_path, key


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_path: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = log_path.open("w")
    # every simulated participant comes from 127.0.0.1: one address holding many people, as a lab behind one NAT
    env = {**os.environ, "STUDY_SESSIONS_PER_ADDRESS": "1000"}
    proc = subprocess.Popen([sys.executable, "-m", "study", "serve", "--db", str(db_path), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)  # exec: this pid is the server's
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"participant server did not start: {log_path.read_text()[-2000:]}")


async def participant(browser, url: str, pid: str, answers: int, think: tuple[float, float], seed: int,
                      started: asyncio.Event, answering: list) -> dict:
    rng = random.Random(seed)
    context = await browser.new_context(viewport={"width": 900, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(120_000)
    await page.goto(url + f"&pid={pid}")
    await page.get_by_role("button", name="I agree and want to take part").click()
    await page.get_by_role("button", name="Start").click()
    frame = page.frame_locator("iframe").first
    answering.append(time.monotonic())
    await started.wait()
    clicked = []
    for n in range(answers):
        await frame.locator("#caption", has_text=f"Image {n + 1} of {answers}").wait_for()
        button = frame.locator("button[data-label='0']")
        await button.wait_for()
        while await button.is_disabled():
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(*think))
        label = rng.randrange(10)
        await frame.locator(f"button[data-label='{label}']").click()
        clicked.append(label)
    await page.get_by_text("finished the study").wait_for()
    log = await page.evaluate("window.randmaskLog || []")
    await context.close()
    return {"pid": pid, "clicked": clicked, "log": log}


async def warm_up(url: str) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(url)
        await page.get_by_text("This link does not work").wait_for(timeout=60_000)
        await browser.close()


def latencies(log: list[dict]) -> list[float]:
    """Answer -> first frame of the next image, for each answer followed by another image."""
    out, answered_at = [], None
    for entry in log:
        if "answered" in entry:
            answered_at = entry["answered"]
        elif "onset" in entry and answered_at is not None:
            out.append(entry["onset"] - answered_at)
            answered_at = None
    return out


async def run_round(url: str, n: int, answers: int, think: tuple[float, float], tag: str, server_pid: int) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        started, answering = asyncio.Event(), []
        cpu0 = proc_cpu_s(server_pid)
        tasks = [asyncio.create_task(participant(browser, url, f"{tag}p{i}", answers, think, i, started, answering))
                 for i in range(n)]
        while len(answering) < n and not any(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        cpu_answering = proc_cpu_s(server_pid)
        started.set()
        t0 = time.monotonic()
        results = await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        cpu1 = proc_cpu_s(server_pid)
        await browser.close()
    return {"results": results, "cpu_total": cpu1 - cpu0, "cpu_answering": cpu1 - cpu_answering, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--participants", type=int, nargs="+", default=[1, 10, 25])
    parser.add_argument("--answers", type=int, default=20, help="images per participant (even, >= 4)")
    parser.add_argument("--think-ms", type=float, nargs=2, default=[1200, 2400], metavar=("MIN", "MAX"))
    args = parser.parse_args()
    think = (args.think_ms[0] / 1000, args.think_ms[1] / 1000)
    with tempfile.TemporaryDirectory() as tmp:
        db_path, key = build(Path(tmp), args.answers, sum(args.participants))
        proc, url = start_server(db_path, Path(tmp) / "server.log")
        try:
            base = f"{url}/?study=bench&key={key}"
            asyncio.run(warm_up(url))  # the first page view imports the study code: not part of any answer
            print(f"participant server pid {proc.pid}; {args.answers} images each, think time "
                  f"{args.think_ms[0]:.0f}-{args.think_ms[1]:.0f} ms; machine: {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
            print(f"{'N':>3} {'answers':>7} {'CPU ms/answer':>13} {'(answering)':>11} {'p50 ms':>7} {'p95 ms':>7} "
                  f"{'lost':>4} {'dup':>4} {'RSS MB':>6} {'wall s':>6} {'load':>5}")
            for round_no, n in enumerate(args.participants):
                out = asyncio.run(run_round(base, n, args.answers, think, f"r{round_no}", proc.pid))
                conn = sqlite3.connect(db_path)
                stored = {}
                for ext, aid, label in conn.execute(
                        "SELECT p.external_id, r.assignment_id, r.label FROM responses r "
                        "JOIN participants p ON p.id = r.participant_id WHERE p.external_id LIKE ?", [f"r{round_no}p%"]):
                    stored.setdefault(ext, []).append((aid, label))
                dup = conn.execute("SELECT count(*) - count(DISTINCT assignment_id) FROM responses").fetchone()[0]
                conn.close()
                lost = 0
                for r in out["results"]:
                    mine = [label for _, label in sorted(stored.get(r["pid"], []))]
                    lost += max(0, len(r["clicked"]) - len(mine))
                    if len(mine) == len(r["clicked"]) and sorted(mine) != sorted(r["clicked"]):
                        lost += 1  # stored something else than what was clicked
                n_stored = sum(len(v) for v in stored.values())
                lat = [x for r in out["results"] for x in latencies(r["log"])]
                p50, p95 = (np.percentile(lat, 50), np.percentile(lat, 95)) if lat else (float("nan"),) * 2
                print(f"{n:>3} {n_stored:>7} {1000 * out['cpu_total'] / max(n_stored, 1):>13.1f} "
                      f"{1000 * out['cpu_answering'] / max(n_stored, 1):>11.1f} {p50:>7.0f} {p95:>7.0f} {lost:>4} {dup:>4} "
                      f"{proc_rss_mb(proc.pid):>6.0f} {out['wall']:>6.0f} {os.getloadavg()[0]:>5.2f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
