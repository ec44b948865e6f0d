"""The participant server under load: N participants label at a human pace, in headless Chromium or browserless.

    python -m bench.bench_study_server [--participants 1 10 25] [--answers 20] [--think-ms 1200 2400] [--workers W]
    python -m bench.bench_study_server --browserless --workers 2 --participants 200 [--think-ms 1500 2500]
    python -m bench.bench_study_server --workers 2 --participants 20 --bots 300 [--window-min 1]
    python -m bench.bench_study_server --workers 2 --participants 20 --spam 30
    python -m bench.bench_study_server --workers 2 --participants 0 --sessions 10000

(`python bench/bench_study_server.py ...` works too.) --workers W starts `python -m study serve --workers W`
(default 1). Browser mode, the default for up to 25 participants without --bots/--spam/--sessions:

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

Browserless mode (--browserless, or any of --bots/--spam/--sessions, or more than 25 participants): the
participants of bench/study_bots.py speak Streamlit's websocket protocol, each from its own invented address
(X-Forwarded-For) and on the worker port that address hashes to, as a proxy's ip_hash would send it. Each opens
the link, consents, does the practice (3 images) and answers every image after a pause in THINK-MS; they join over
--ramp-s seconds. Per N it prints: CPU ms per stored answer of all worker processes (whole run, and from the
moment every participant saw a first image); answer -> stored p50/p95/max (sent until the server's reply lists it
as handled, which it renders after the commit), and p50/p95 of the answers sent after that moment; link -> first image
p50/max; lost (given, not in the database), lost after an acknowledgement, duplicated (a stored answer not given,
or stored twice), wrong (another label stored), items above k (trial items with more than k answers); reconnects;
errors; RSS of the workers; the driver's own CPU.
  --bots B: meanwhile, B consent-only visitors (fresh PROLIFIC_PIDs, their own addresses) arrive over each
    inactivity window (the bench study's --window-min), again every window, while the N participants join: the
    longest link -> first image of a participant is printed.
  --spam S: meanwhile, S tabs of one consented participant (one address: the per-address cap applies) post the
    trial widget's message in a loop: prints the participants' link -> first image and answer -> stored p95.
  --sessions C: after the rounds, C short sessions (page load, leave; 16 at once): open file descriptors and RSS of
    every worker before, and after the sessions ended and the workers' sweeps ran.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
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

if __package__:
    from .study_bots import Participant, consent_only, invented_address, spam_tab, visit_outcome, worker_port
else:  # run as a script: bench/ is on the path
    from study_bots import Participant, consent_only, invented_address, spam_tab, visit_outcome, worker_port

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
CLK_TCK = os.sysconf("SC_CLK_TCK")


PRACTICE = 3


def build(root: Path, answers: int, capacity: int, practice: bool = False,
          window_min: float = 30.0) -> tuple[Path, str]:
    """A 2-condition study with `answers` trials per participant (2 of them catch trials), room for `capacity`
    participants, and (with `practice`) 3 practice images before them; inactive after `window_min` minutes."""
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
    practice_set = None
    if practice:
        rows = [{"index": 9_970 + i, "true_label": i, "source": "", "attack": "clean", "source_pred": "", "linf": 0,
                 "l2": 0} for i in range(PRACTICE)]
        practice_set = write_set(root / "practice", rows, list(rng.integers(0, 256, size=(PRACTICE, 32, 32, 3),
                                                                            dtype=np.uint8)))
    db_path = root / "bench.db"
    db = open_db(db_path)
    create_study(db, StudyConfig(slug="bench", labels_per_item=1, items_per_participant=2 * per_condition,
                                 catch_per_participant=2, abandon_after_min=window_min), folders, root / "catch",
                 practice_set)
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


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def worker_pids(server: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve: the server itself with one worker (serve execs), else the supervisor's children."""
    if workers == 1:
        return [server.pid]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1]) == server.pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return sorted(pids)


def start_server(db_path: Path, log_path: Path, workers: int = 1,
                 env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """`python -m study serve --workers W` on free ports; returns it and its workers' URLs once all answer."""
    port = free_ports(workers)
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "study", "serve", "--db", str(db_path), "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    urls = [f"http://127.0.0.1:{p}" for p in range(port, port + workers)]
    deadline = time.monotonic() + 180
    waiting = list(urls)
    while waiting and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{waiting[0]}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    waiting.pop(0)
                    continue
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    if not waiting:
        return proc, urls
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


def cpu_s(pids: list[int]) -> float:
    return sum(proc_cpu_s(pid) for pid in pids)


async def run_round(urls: list[str], n: int, answers: int, think: tuple[float, float], tag: str,
                    pids: list[int]) -> dict:
    """Browser participant i goes to worker i mod W (browsers here share one address: no hashing to spread)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        started, answering = asyncio.Event(), []
        cpu0 = cpu_s(pids)
        tasks = [asyncio.create_task(participant(browser, urls[i % len(urls)], f"{tag}p{i}", answers, think, i, started,
                                                 answering)) for i in range(n)]
        while len(answering) < n and not any(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        cpu_answering = cpu_s(pids)
        started.set()
        t0 = time.monotonic()
        results = await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        cpu1 = cpu_s(pids)
        await browser.close()
    return {"results": results, "cpu_total": cpu1 - cpu0, "cpu_answering": cpu1 - cpu_answering, "wall": wall}


# ------------------------------------------------------------------------------------------------ browserless
def stored_answers(db_path: Path, prefix: str) -> dict[str, dict[int, int]]:
    """external id -> {assignment id: label} for this round's participants."""
    conn = sqlite3.connect(db_path)
    try:
        stored: dict[str, dict[int, int]] = {}
        for ext, aid, label in conn.execute("SELECT p.external_id, r.assignment_id, r.label FROM responses r JOIN "
                                            "participants p ON p.id = r.participant_id WHERE p.external_id LIKE ?",
                                            [f"{prefix}%"]):
            stored.setdefault(ext, {})[aid] = label
        return stored
    finally:
        conn.close()


def database_counts(db_path: Path) -> tuple[int, int]:
    """(answers stored twice for one assignment, trial items with more than k answers of included participants)."""
    conn = sqlite3.connect(db_path)
    try:
        dup = conn.execute("SELECT count(*) - count(DISTINCT assignment_id) FROM responses").fetchone()[0]
        above = conn.execute(
            "SELECT count(*) FROM (SELECT i.id FROM items i JOIN studies s ON s.id = i.study_id JOIN responses r ON "
            "r.item_id = i.id JOIN participants p ON p.id = r.participant_id WHERE i.role = 'trial' AND p.excluded = 0 "
            "GROUP BY i.id HAVING count(*) > max(s.labels_per_item))").fetchone()[0]
        return dup, above
    finally:
        conn.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def bot_waves(bases: dict[int, str], query: str, bots: int, window_s: float, stop: asyncio.Event,
                    done: list[float]) -> None:
    """`bots` consent-only visitors spread over each window, every window, until `stop`; 16 at a time at most."""
    gate, n, tasks = asyncio.Semaphore(16), 0, []

    async def one(i: int) -> None:
        async with gate:
            address = invented_address(i, block=100)
            try:
                done.append(await consent_only(bases[worker_port(address, sorted(bases))], query, f"bot{i}", address))
            except Exception:  # noqa: BLE001 - a refused or dropped bot is simply not counted
                pass

    while not stop.is_set():
        for _ in range(bots):
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            try:
                await asyncio.wait_for(stop.wait(), window_s / max(bots, 1))
                break
            except TimeoutError:
                pass
    await asyncio.gather(*tasks)


async def browserless_round(urls: list[str], key: str, n: int, args, tag: str, pids: list[int]) -> dict:
    ports = [int(u.rsplit(":", 1)[1]) for u in urls]
    bases = dict(zip(ports, urls, strict=True))
    query = f"study=bench&key={key}"
    think = (args.think_ms[0] / 1000, args.think_ms[1] / 1000)
    stop, go = asyncio.Event(), asyncio.Event()
    background, bot_times, spam_sent = [], [], []
    if args.spam:
        spam_address = "198.51.100.7"
        spam_base = bases[worker_port(spam_address, ports)]
        await consent_only(spam_base, query, f"{tag}spam", spam_address)
        spam = [asyncio.create_task(spam_tab(spam_base, query, f"{tag}spam", spam_address, go, stop))
                for _ in range(args.spam)]
        await asyncio.sleep(min(30.0, 0.3 * args.spam))  # the tabs load before the participants come
        go.set()
        background += spam
    if args.bots:
        background.append(asyncio.create_task(bot_waves(bases, query, args.bots, 60 * args.window_min, stop, bot_times)))
    cpu0, driver0, t0 = cpu_s(pids), time.process_time(), time.monotonic()
    bots = [Participant(bases, query, f"{tag}p{i}", invented_address(i + 1), seed=i, think_s=think,
                        give_up_s=args.give_up_s) for i in range(n)]

    async def join(i: int, bot: Participant):
        await asyncio.sleep(args.ramp_s * i / max(n, 1))
        return await bot.run()

    tasks = [asyncio.create_task(join(i, b)) for i, b in enumerate(bots)]
    while not all(b.result.answering_at or t.done() for b, t in zip(bots, tasks, strict=True)):
        await asyncio.sleep(0.05)
    cpu_answering, all_answering = cpu_s(pids), time.monotonic()
    results = await asyncio.gather(*tasks)
    wall, cpu1 = time.monotonic() - t0, cpu_s(pids)
    stop.set()
    done = await asyncio.gather(*background, return_exceptions=True)
    if args.spam:
        spam_sent = [d for d in done[:args.spam] if isinstance(d, int)]
    return {"results": results, "cpu_total": cpu1 - cpu0, "cpu_answering": cpu1 - cpu_answering, "wall": wall,
            "all_answering": all_answering,
            "driver_cpu": time.process_time() - driver0, "bot_times": bot_times, "spam_sent": spam_sent}


def print_browserless(db_path: Path, n: int, workers: int, tag: str, out: dict, pids: list[int]) -> None:
    results = out["results"]
    stored = stored_answers(db_path, f"{tag}p")
    lost = acked_lost = extra = wrong = 0
    for r in results:
        mine = stored.get(r.pid, {})
        lost += len(set(r.given) - set(mine))
        acked_lost += len(r.acked - set(mine))
        extra += len(set(mine) - set(r.given))  # stored, never given: a duplicate in disguise
        wrong += sum(mine[a] != label for a, label in r.given.items() if a in mine)
    dup, above = database_counts(db_path)
    n_stored = sum(len(v) for v in stored.values())
    lat = [x for r in results for x in r.latencies_ms]
    steady = [x for r in results for x, sent in zip(r.latencies_ms, r.sent, strict=True) if sent >= out["all_answering"]]
    first = [r.first_image_s for r in results if r.first_image_s is not None]
    errors = [r.error for r in results if r.error]
    print(f"{workers:>2} {n:>4} {n_stored:>7} {1000 * out['cpu_total'] / max(n_stored, 1):>8.1f} "
          f"{1000 * out['cpu_answering'] / max(n_stored, 1):>8.1f} {pct(lat, 50):>6.0f} {pct(lat, 95):>6.0f} "
          f"{max(lat, default=float('nan')):>6.0f} {pct(steady, 50):>6.0f} {pct(steady, 95):>6.0f} {pct(first, 50):>6.1f} {max(first, default=float('nan')):>6.1f} "
          f"{lost:>4} {acked_lost:>5} {dup + extra:>4} {wrong:>5} {above:>5} {sum(r.reconnects for r in results):>5} "
          f"{len(errors):>4} {sum(proc_rss_mb(p) for p in pids):>6.0f} {out['wall']:>6.0f} "
          f"{100 * out['driver_cpu'] / max(out['wall'], 1e-9):>6.0f} {os.getloadavg()[0]:>5.2f}", flush=True)
    if errors:
        print(f"     errors: {sorted(set(errors))[:3]}")
    if out["bot_times"]:
        print(f"     bots: {len(out['bot_times'])} consents (each {pct(out['bot_times'], 50):.2f} s p50); longest "
              f"link -> first image of a participant {max(first, default=float('nan')):.2f} s")
    if out["spam_sent"] or out.get("spam"):
        print(f"     spam: {len(out['spam_sent'])} tabs sent {sum(out['spam_sent'])} widget messages "
              f"({sum(out['spam_sent']) / max(out['wall'], 1e-9):.0f}/s), {sum(s > 0 for s in out['spam_sent'])} "
              f"got through the session cap; participants' link -> first image p50 {pct(first, 50):.2f} s, "
              f"p95 {pct(first, 95):.2f} s, max {max(first, default=float('nan')):.2f} s; answer -> stored p95 "
              f"{pct(lat, 95):.0f} ms")


async def churn(urls: list[str], key: str, sessions: int, at_once: int = 16, first: int = 0) -> collections.Counter:
    """`sessions` short visits (page load, leave), `at_once` at a time, each from its own invented address (one
    address opening thousands would meet the per-address connection budget): their outcomes."""
    ports = [int(u.rsplit(":", 1)[1]) for u in urls]
    bases = dict(zip(ports, urls, strict=True))
    gate, outcomes = asyncio.Semaphore(at_once), collections.Counter()

    async def one(i: int) -> None:
        async with gate:
            address = invented_address(i, block=172)
            outcomes[await visit_outcome(bases[worker_port(address, ports)],
                                         f"study=bench&key={key}&PROLIFIC_PID=visitor{i}", address)] += 1

    await asyncio.gather(*(one(i) for i in range(first, first + sessions)))
    return outcomes


def measure(pids: list[int]) -> list[tuple[int, float]]:
    return [(proc_fds(p), proc_rss_mb(p)) for p in pids]


def sessions_churn(urls: list[str], key: str, sessions: int, pids: list[int]) -> None:
    asyncio.run(churn(urls, key, 300))  # warm: the pools, caches and allocators reach their working size
    time.sleep(12)  # two sweeps: the warm-up's sessions are gone
    before = measure(pids)
    t0 = time.monotonic()
    outcomes = asyncio.run(churn(urls, key, sessions, first=300))
    took = time.monotonic() - t0
    time.sleep(12)
    deadline = time.monotonic() + 60  # the sweeps (every 5 s) shut left sessions down at the second one
    while (after := measure(pids)) and sum(f for f, _ in after) > sum(f for f, _ in before) + 3 * len(pids) \
            and time.monotonic() < deadline:
        time.sleep(2)
    print(f"sessions: {sessions} page loads in {took:.0f} s ({sessions / took:.0f}/s): "
          + ", ".join(f"{n} {what}" for what, n in outcomes.most_common()))
    for pid, (f0, r0), (f1, r1) in zip(pids, before, after, strict=True):
        print(f"  worker pid {pid}: open files {f0} -> {f1} ({100 * (f1 - f0) / f0:+.0f}%), "
              f"RSS {r0:.0f} -> {r1:.0f} MB ({100 * (r1 - r0) / r0:+.0f}%)")
    f0, f1 = sum(f for f, _ in before), sum(f for f, _ in after)
    r0, r1 = sum(r for _, r in before), sum(r for _, r in after)
    print(f"  all workers: open files {f0} -> {f1} ({100 * (f1 - f0) / f0:+.1f}%), RSS {r0:.0f} -> {r1:.0f} MB "
          f"({100 * (r1 - r0) / r0:+.1f}%)", flush=True)


def run_browserless(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        capacity = 2 * sum(args.participants) + 2
        db_path, key = build(Path(tmp), args.answers, capacity, practice=True, window_min=args.window_min)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc, urls = start_server(db_path, Path(tmp) / "server.log", args.workers, env=env)
        try:
            pids = worker_pids(proc, args.workers)
            asyncio.run(churn(urls, key, 4 * args.workers))  # the first page view imports the study code
            print(f"participant server: {args.workers} worker(s), pids {pids}; browserless participants, "
                  f"{PRACTICE} practice + {args.answers} images each, think time {args.think_ms[0]:.0f}-"
                  f"{args.think_ms[1]:.0f} ms, joining over {args.ramp_s:g} s; bots {args.bots} per "
                  f"{args.window_min:g} min, spam tabs {args.spam}; machine: {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.2f} at start")
            if any(args.participants):
                print(f"{'W':>2} {'N':>4} {'answers':>7} {'CPU ms/answer':>17} {'answer->stored ms':>20} "
                      f"{'(answering)':>13} "
                      f"{'first image s':>13} {'lost':>4} {'acked':>5} {'dup':>4} {'wrong':>5} {'>k':>5} {'recon':>5} "
                      f"{'err':>4} {'RSS MB':>6} {'wall s':>6} {'driver':>6} {'load':>5}")
                print(f"{'':>2} {'':>4} {'':>7} {'all':>8} {'answer':>8} {'p50':>6} {'p95':>6} {'max':>6} {'p50':>6} "
                      f"{'p95':>6} {'p50':>6} "
                      f"{'max':>6} {'':>4} {'lost':>5} {'':>4} {'':>5} {'':>5} {'':>5} {'':>4} {'':>6} {'':>6} "
                      f"{'CPU %':>6}")
            for round_no, n in enumerate(args.participants):
                if n == 0:
                    continue
                tag = f"r{round_no}"
                out = asyncio.run(browserless_round(urls, key, n, args, tag, pids))
                print_browserless(db_path, n, args.workers, tag, out, pids)
            if args.sessions:
                sessions_churn(urls, key, args.sessions, pids)
            log = (Path(tmp) / "server.log").read_text()
            if "Traceback" in log:
                print("server log has a traceback:\n" + log[log.index("Traceback"):][:2000])
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def run_browsers(args) -> None:
    think = (args.think_ms[0] / 1000, args.think_ms[1] / 1000)
    with tempfile.TemporaryDirectory() as tmp:
        db_path, key = build(Path(tmp), args.answers, sum(args.participants))
        # every browser here comes from 127.0.0.1: lift the per-address session cap above the round's size
        env = {**os.environ, "STUDY_SESSIONS_PER_ADDRESS": str(max(20, max(args.participants) + 5))}
        proc, urls = start_server(db_path, Path(tmp) / "server.log", args.workers, env=env)
        try:
            pids = worker_pids(proc, args.workers)
            bases = [f"{url}/?study=bench&key={key}" for url in urls]
            for url in urls:
                asyncio.run(warm_up(url))  # the first page view imports the study code: not part of any answer
            print(f"participant server pids {pids}; {args.answers} images each, think time "
                  f"{args.think_ms[0]:.0f}-{args.think_ms[1]:.0f} ms; machine: {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.2f} at start")
            print(f"{'N':>3} {'answers':>7} {'CPU ms/answer':>13} {'(answering)':>11} {'p50 ms':>7} {'p95 ms':>7} "
                  f"{'lost':>4} {'dup':>4} {'RSS MB':>6} {'wall s':>6} {'load':>5}")
            for round_no, n in enumerate(args.participants):
                out = asyncio.run(run_round(bases, n, args.answers, think, f"r{round_no}", pids))
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
                      f"{sum(proc_rss_mb(p) for p in pids):>6.0f} {out['wall']:>6.0f} {os.getloadavg()[0]:>5.2f}",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, nargs="+", default=None,
                        help="participants per round (default: 1 10 25 with browsers, 200 browserless)")
    parser.add_argument("--answers", type=int, default=20, help="images per participant (even, >= 4)")
    parser.add_argument("--think-ms", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="pause before each answer (default: 1200 2400 with browsers, 1500 2500 browserless)")
    parser.add_argument("--workers", type=int, default=1, help="participant-server processes (serve --workers)")
    parser.add_argument("--browserless", action="store_true", help="websocket participants instead of Chromium")
    parser.add_argument("--bots", type=int, default=0, help="consent-only visitors per inactivity window")
    parser.add_argument("--window-min", type=float, default=1.0, help="the bench study's inactivity window (minutes)")
    parser.add_argument("--spam", type=int, default=0, help="tabs of one participant posting widget messages")
    parser.add_argument("--sessions", type=int, default=0, help="short sessions after the rounds (fd/RSS churn)")
    parser.add_argument("--ramp-s", type=float, default=None, help="participants join over this many seconds "
                        "(default: 0.1 s per participant, at most 30 s)")
    parser.add_argument("--give-up-s", type=float, default=900.0, help="a browserless participant stops retrying")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and remove the study on the way out
    browserless = args.browserless or args.bots or args.spam or args.sessions or max(args.participants or [0]) > 25
    if args.participants is None:
        args.participants = [200] if browserless else [1, 10, 25]
    if args.think_ms is None:
        args.think_ms = [1500, 2500] if browserless else [1200, 2400]
    if args.ramp_s is None:
        args.ramp_s = min(30.0, 0.1 * max(args.participants))
    if args.answers < 4 or args.answers % 2 or args.workers < 1 or min(args.participants) < 0:
        parser.error("--answers must be even and at least 4, --workers at least 1, --participants not negative")
    (run_browserless if browserless else run_browsers)(args)


if __name__ == "__main__":
    main()
