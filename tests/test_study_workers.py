"""`python -m study serve --workers N`: refusals, the session cap shared by every worker, sign-in throttling
across processes, and (slow) N real workers serving one database: the labeling page on every port, one cap per
address over all of them, k labels per item with participants answering on both at once, and no acknowledged
answer lost when a worker is killed with -9. The participants are the browserless ones of bench/study_bots.py."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import test_study_support as support
from streamlit_server import free_ports, participant_server_process, participant_workers

from bench.study_bots import Participant, Session, invented_address, visit, visit_outcome, worker_port
from study import get_study, open_db
from study.auth import MAX_FAILURES, check_password, client_keys
from study.pool import ConnectionPool
from study.serve import max_workers
from study.workers import SharedSessionGuard, Supervisor

cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


def _leftovers() -> set[str]:
    return {p.name for p in SHM.glob("study-serve-*")} if SHM.is_dir() else set()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers 0: at least 1"),
    (["--workers", str(max_workers() + 1)], "more than this machine can use"),
    (["--workers", "2", "--port", "65535"], "needs ports up to 65536"),
    (["--workers", "2", "--port", "TAKEN"], "is taken (worker 2 of 2"),
    (["--workers", "1", "--port", "TAKEN0"], "is taken (the server's port)"),
])
def test_serve_refuses_bad_worker_values_in_one_line_leaving_nothing(tmp_path, study_sets, args, message):
    db = tmp_path / "db" / "s.db"
    db.parent.mkdir()
    support.make_study(db, study_sets)
    first = free_ports(2)
    held = socket.socket()
    held.bind(("127.0.0.1", first if "TAKEN0" in args else first + 1))  # someone else's server
    held.listen()
    args = [str(first) if a.startswith("TAKEN") else a for a in args]
    before, shm_before = sorted(os.listdir(db.parent)), _leftovers()
    (tmp_path / "tmp").mkdir()
    try:
        result = subprocess.run([sys.executable, "-m", "study", "serve", "--db", str(db), *args], capture_output=True,
                                text=True, cwd=ROOT, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    finally:
        held.close()
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(os.listdir(db.parent)) == before and not os.listdir(tmp_path / "tmp") and _leftovers() == shm_before


def test_nested_borrows_from_the_pool_never_wait_for_themselves(tmp_path, study_sets):
    """The page's run borrows a connection and calls the trial fragment, which borrows again. Old pool: with
    max_open page runs at once, each held one and waited for a second forever, and the whole worker froze (found
    by the 200-participant bench: every answer stopped 20 s in; here 3 of 3 threads hung)."""
    support.make_study(tmp_path / "s.db", study_sets)
    pool = ConnectionPool(tmp_path / "s.db", max_open=3)
    together = threading.Barrier(3)
    finished = []

    def page_run() -> None:
        with pool.connection() as outer:
            together.wait(timeout=10)  # every slot is taken now
            with pool.connection() as inner:  # the fragment
                assert inner is outer
                finished.append(get_study(inner, "s1").slug)

    threads = [threading.Thread(target=page_run, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert finished == ["s1"] * 3 and pool.opened == 3
    with pool.connection() as again:  # given back once, by the outer borrow
        assert not again.conn.in_transaction
    pool.close()


def _table(tmp_path: Path) -> Path:
    supervisor = Supervisor(lambda port: [], {}, "127.0.0.1", [1, 2], tmp_path)
    path = supervisor._make_table()
    return path


def test_session_cap_counts_the_sessions_of_every_worker(tmp_path):
    """Old code (a SessionGuard per process): a stranger's 4th session, on the worker holding only one of the 3
    allowed, was admitted; with N workers the cap was N times the setting."""
    path = _table(tmp_path)
    try:
        key = b"k" * 32
        w0, w1 = (SharedSessionGuard(path, w, key, per_address=3) for w in (0, 1))
        assert w0.admit("a", "10.0.0.1") and w0.admit("b", "10.0.0.1") and w1.admit("c", "10.0.0.1")
        assert not w1.has_room("d", "10.0.0.1") and not w1.admit("d", "10.0.0.1")
        assert not w0.admit("e", "10.0.0.1")
        assert w1.admit("c", "10.0.0.1")  # a known session's reruns pass
        assert w1.admit("f", "10.0.0.2")  # another address is not crowded out
        w0.keep_only(["a"])  # b's browser left worker 0
        assert w1.has_room("d", "10.0.0.1") and w1.admit("d", "10.0.0.1") and not w0.admit("g", "10.0.0.1")
        # worker 1 killed and started again: its sessions no longer count
        SharedSessionGuard(path, 1, key, per_address=3)
        assert w0.admit("g", "10.0.0.1") and w0.admit("h", "10.0.0.1")
        assert b"10.0.0.1" not in b"".join(p.read_bytes() for p in path.parent.iterdir())  # no address on file
        # the table gone (someone cleared /dev/shm): each worker still caps its own sessions, nothing raises
        for p in path.parent.iterdir():
            p.unlink()
        path.parent.rmdir()
        assert w1.admit("x", "10.0.0.9") and len(w1) >= 1
    finally:
        if path.parent.exists():
            for p in path.parent.iterdir():
                p.unlink()
            path.parent.rmdir()


def test_organiser_lockout_counts_wrong_passwords_from_every_process(tmp_path, study_sets):
    """Sign-in throttling is in the database: MAX_FAILURES wrong passwords, each from its own process (as from N
    workers), lock the address out; a per-process count would have allowed MAX_FAILURES per process."""
    support.make_study(tmp_path / "s.db", study_sets)
    code = ("import sys; from study import open_db; from study.auth import check_password, client_keys; "
            "a = check_password(open_db(sys.argv[1]), 'guess', 'the right password!', keys=client_keys('10.1.2.3')); "
            "print(a.locked_for_s)")
    for _ in range(MAX_FAILURES):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.db")], check=True, cwd=ROOT, timeout=60,
                       capture_output=True)
    attempt = check_password(open_db(tmp_path / "s.db"), "the right password!", "the right password!",
                             keys=client_keys("10.1.2.3"))
    assert not attempt.ok and attempt.locked_for_s > 0


# ------------------------------------------------------------------------------------------------ live workers
@pytest.fixture(scope="module")
def workers(tmp_path_factory, study_sets):
    """Two workers on one database with four studies: 'page' (the cap), 'k' (capacity for exactly 12
    participants: 36 trial items, k = 2, 6 each), 'kill', 'proxy'."""
    root = tmp_path_factory.mktemp("workers")
    db = root / "s.db"
    slugs = ("page", "k", "kill", "proxy")
    for slug in slugs:
        support.make_study(db, study_sets, slug=slug, labels_per_item=3 if slug == "proxy" else 2)
    keys = {slug: get_study(open_db(db), slug).link_key for slug in slugs}
    env = {**os.environ, "STUDY_SESSIONS_PER_ADDRESS": "3"}
    with participant_workers(db, root / "server.log", 2, env=env) as (urls, proc):
        yield {"db": db, "keys": keys, "urls": urls, "proc": proc, "log": root / "server.log",
               "bases": {int(u.rsplit(":", 1)[1]): u for u in urls}}


def _worker_pids(supervisor: int) -> dict[int, int]:
    """port -> pid of the supervisor's worker processes (from their command lines)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"--server.port" in argv:
            pids[int(argv[argv.index(b"--server.port") + 1])] = int(entry.name)
    return pids


def _addresses_for(ports: list[int], per_port: int, start: int) -> list[str]:
    """Invented client addresses, `per_port` of them hashing to each worker port."""
    chosen: dict[int, list[str]] = {p: [] for p in ports}
    n = start
    while any(len(v) < per_port for v in chosen.values()):
        address = invented_address(n)
        port = worker_port(address, ports)
        if len(chosen[port]) < per_port:
            chosen[port].append(address)
        n += 1
    return [a for v in chosen.values() for a in v]


def _stored(db: Path, slug: str) -> dict[str, dict[int, int]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT p.external_id, r.assignment_id, r.label FROM responses r JOIN participants p "
                            "ON p.id = r.participant_id JOIN studies s ON s.id = p.study_id WHERE s.slug = ?", [slug])
        stored: dict[str, dict[int, int]] = {}
        for pid, assignment, label in rows:
            stored.setdefault(pid, {})[assignment] = label
        return stored
    finally:
        conn.close()


@pytest.mark.slow
def test_every_worker_serves_the_labeling_page_with_one_session_cap(workers):
    ports = sorted(workers["bases"])
    key = workers["keys"]["page"]

    async def scenario():
        pages = []
        for base in workers["urls"]:
            for query in (f"study=page&key={'f' * 32}&pid=x", f"study=page&key={key}&pid=someone"):
                session = await Session.open(base, query, None)
                pages.append(await session.run())
                await session.close()
        # one address, 3 sessions allowed: two held on one worker and one on the other fill the cap ...
        one = "203.0.113.9"
        holders = []
        for base in (workers["urls"][0], workers["urls"][0], workers["urls"][1]):
            session = await Session.open(base, f"study=page&key={key}&pid=someone", one)
            await session.run()
            holders.append(session)
        closed = []
        for base in workers["urls"]:  # ... so a 4th is refused on either worker
            session = await Session.open(base, f"study=page&key={key}&pid=someone", one)
            try:
                page = await session.run()
                await asyncio.wait_for(session.ws.wait_closed(), 10)  # the server closes it after showing why
                closed.append((page.texts, session.ws.close_code))
            finally:
                await session.close()
        for session in holders:
            await session.close()
        await asyncio.sleep(12)  # the workers' sweeps notice the holders left
        room = await visit(workers["urls"][1], f"study=page&key={key}&pid=someone", one)
        return pages, closed, room

    pages, closed, room = asyncio.run(scenario())
    for bad_key, good in zip(pages[0::2], pages[1::2], strict=True):  # the labeling page, on every worker
        assert any("not valid" in t for t in bad_key.texts) and "consent" in good.buttons
    assert len(ports) == 2 and len(_worker_pids(workers["proc"].pid)) == 2
    for texts, code in closed:
        assert any("Too many study pages" in t for t in texts) and code == 1008
    assert room
    log = workers["log"].read_text()
    assert "over the per-address cap" in log and "Traceback" not in log


@pytest.mark.slow
def test_participants_answering_on_two_workers_at_once_give_every_item_exactly_k(workers):
    """12 participants, 6 on each worker, consent and answer at once: 12 is exactly the study's room (36 items,
    k = 2, 6 each), so one allocation that read the labels before another committed would give an item a third
    label (planted: allocating from loads read just before BEGIN IMMEDIATE left items with 1, 3 and 4 labels,
    2 runs of 2).
    Every answer the driver saw acknowledged is in the database with its label, and nothing else is."""
    ports = sorted(workers["bases"])
    addresses = _addresses_for(ports, 6, 1000)
    query = f"study=k&key={workers['keys']['k']}"

    async def run():
        bots = [Participant(workers["bases"], query, f"k{i}", a, seed=i, think_s=(0.05, 0.2), feedback_s=(0, 0.05),
                            give_up_s=240) for i, a in enumerate(addresses)]
        return await asyncio.gather(*(b.run() for b in bots))

    results = asyncio.run(run())
    assert Counter(r.port for r in results) == {ports[0]: 6, ports[1]: 6}
    assert all(r.completed and r.error is None for r in results), [(r.pid, r.error) for r in results]
    stored = _stored(workers["db"], "k")
    for r in results:
        assert stored[r.pid] == r.given and r.acked == set(r.given) and len(r.given) == 11  # 3 practice + 6 + 2 catch
    conn = sqlite3.connect(workers["db"])
    labels = conn.execute("SELECT count(r.id) FROM items i JOIN studies s ON s.id = i.study_id LEFT JOIN responses r "
                          "ON r.item_id = i.id WHERE s.slug = 'k' AND i.role = 'trial' GROUP BY i.id").fetchall()
    conn.close()
    assert len(labels) == 36 and {n for (n,) in labels} == {2}  # every item exactly k: none above, none short
    late = asyncio.run(Participant(workers["bases"], query, "late", invented_address(5000), seed=99).run())
    assert late.error and "all the answers it needs" in late.error and not late.given


@pytest.mark.slow
def test_killing_a_worker_loses_no_acknowledged_answer(workers):
    """kill -9 of one worker while its participants answer: the supervisor starts it again, its participants
    reconnect (as the page does) and resend what was not acknowledged; every answer acknowledged before the kill
    is stored, and every participant finishes."""
    ports = sorted(workers["bases"])
    addresses = _addresses_for(ports, 3, 3000)
    query = f"study=kill&key={workers['keys']['kill']}"
    victim_port = ports[1]
    victim = _worker_pids(workers["proc"].pid)[victim_port]

    async def run():
        bots = [Participant(workers["bases"], query, f"kill{i}", a, seed=i, think_s=(0.2, 0.5), feedback_s=(0, 0.1),
                            give_up_s=240) for i, a in enumerate(addresses)]
        tasks = [asyncio.create_task(b.run()) for b in bots]
        on_victim = [b for b in bots if b.result.port == victim_port]
        while sum(len(b.result.acked) for b in on_victim) < 9:  # some answers acknowledged there, more to come
            await asyncio.sleep(0.05)
        acked_before = {b.result.pid: set(b.result.acked) for b in bots}
        os.kill(victim, signal.SIGKILL)
        return acked_before, await asyncio.gather(*tasks)

    acked_before, results = asyncio.run(run())
    stored = _stored(workers["db"], "kill")
    assert all(r.completed and r.error is None for r in results), [(r.pid, r.error) for r in results]
    for r in results:
        assert acked_before[r.pid] <= set(stored[r.pid]) and stored[r.pid] == r.given
    assert sum(r.reconnects for r in results if r.port == victim_port) >= 3
    deadline = time.monotonic() + 60
    while (now := _worker_pids(workers["proc"].pid).get(victim_port)) in (None, victim) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now not in (None, victim)
    assert "stopped (killed by SIGKILL); starting it again" in workers["log"].read_text()


def _rss_mb(pid: int) -> float:
    line = next(li for li in Path(f"/proc/{pid}/status").read_text().splitlines() if li.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


OUTCOMES: Counter = Counter()


async def _churn(url: str, query: str, visits: int, at_once: int = 16, first: int = 0) -> int:
    """`visits` short sessions, `at_once` at a time, each from its own address (as a crowd comes: one address
    opening hundreds of sessions is refused by the per-address connection budget long before it could add up)."""
    gate, finished = asyncio.Semaphore(at_once), 0

    async def one(i: int) -> None:
        nonlocal finished
        async with gate:
            outcome = await visit_outcome(url, f"{query}&pid=visitor{i}", invented_address(i, block=172))
            OUTCOMES[outcome] += 1
            finished += outcome == "finished"

    await asyncio.gather(*(one(i) for i in range(first, first + visits)))
    return finished


@pytest.mark.slow
def test_sessions_leave_no_memory_behind(tmp_path, study_sets):
    """Old participant app: a module global held each run's context, and Streamlit's hash stack (a dict weakly
    keyed by thread, holding each cached function, whose globals those are) kept every run's thread, runner and
    session state: RSS grew ~23 MB per 1000 page loads (+55% over 10,000 sessions on two workers; planted back:
    this test saw +23 MB). Now 1000 page loads after a warm-up leave RSS and descriptors where they were."""
    support.make_study(tmp_path / "s.db", study_sets)
    query = f"study=s1&key={get_study(open_db(tmp_path / 's.db'), 's1').link_key}"
    with participant_server_process(tmp_path / "s.db", tmp_path / "server.log") as (url, proc):
        assert asyncio.run(_churn(url, query, 300)) == 300, OUTCOMES  # the pool, caches and allocator reach their working size
        time.sleep(12)  # two sweeps: the warm-up's sessions are shut down
        fds, rss = len(os.listdir(f"/proc/{proc.pid}/fd")), _rss_mb(proc.pid)
        assert asyncio.run(_churn(url, query, 1000, first=300)) == 1000, OUTCOMES
        time.sleep(12)
        fds_after, rss_after = len(os.listdir(f"/proc/{proc.pid}/fd")), _rss_mb(proc.pid)
    assert rss_after - rss < 8, (rss, rss_after)
    assert fds_after <= fds + 3, (fds, fds_after)


# ------------------------------------------------------------------------------------------------ proxy examples
def _readme_block(marker: str) -> str:
    """The README's fenced block that contains `marker`."""
    blocks, current = [], None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def _program(name: str) -> str:
    path = os.environ.get(f"{name.upper()}_BIN") or shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (or set ${name.upper()}_BIN to its path)")
    return path


def test_readme_caddy_example_for_workers_is_valid(tmp_path):
    caddy = _program("caddy")
    block = _readme_block("lb_policy ip_hash")
    assert "127.0.0.1:8502 127.0.0.1:8503" in block
    (tmp_path / "Caddyfile").write_text(block)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    run = subprocess.run([caddy, "validate", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and "Valid configuration" in run.stdout + run.stderr, run.stderr[-1000:]


def test_readme_nginx_example_for_workers_is_valid(tmp_path):
    nginx = _program("nginx")
    block = _readme_block("upstream study_workers")
    assert "ip_hash;" in block and "proxy_set_header Host $http_host;" in block
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "1", "-subj", "/CN=study.example.org"],
                   check=True, capture_output=True, timeout=60)
    block = block.replace("/etc/letsencrypt/live/study.example.org/fullchain.pem", str(tmp_path / "cert.pem"))
    block = block.replace("/etc/letsencrypt/live/study.example.org/privkey.pem", str(tmp_path / "key.pem"))
    temps = "".join(f"{kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path / 'nginx.pid'};\nevents {{}}\nhttp {{\n{temps}{block}}}\n")
    run = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e", "stderr"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "test is successful" in run.stderr, run.stderr[-1000:]


# ------------------------------------------------------------------------------------------------ the bench
@pytest.mark.slow
def test_browserless_bench_counts_agree_with_the_database():
    """bench_study_server's browserless round on 2 workers: 4 participants x (3 practice + 4 images), and its row
    says what the database holds (the bench compares its participants' answers with the stored ones)."""
    run = subprocess.run([sys.executable, "-m", "bench.bench_study_server", "--browserless", "--workers", "2",
                          "--participants", "4", "--answers", "4", "--think-ms", "100", "300"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith(" 2    4 ")]
    assert len(rows) == 1, run.stdout
    w, n, answers, *_, lost, acked_lost, dup, wrong, above, reconnects, errors = rows[0][:19]
    assert (w, n, answers) == ("2", "4", "28") and (lost, acked_lost, dup, wrong, above, errors) == ("0",) * 6
    assert "traceback" not in run.stdout.lower()


def _proxy_config(kind: str, root: Path, ports: list[int], listen: int) -> list[str]:
    """The README's block for `kind`, on plain HTTP at 127.0.0.1:`listen` before the worker `ports`; its command."""
    if kind == "nginx":
        block = _readme_block("upstream study_workers").replace("listen 443 ssl;", f"listen 127.0.0.1:{listen};")
        block = "\n".join(line for line in block.splitlines() if "ssl_" not in line)
        for readme_port, port in zip((8502, 8503), ports, strict=True):
            block = block.replace(f"127.0.0.1:{readme_port} ", f"127.0.0.1:{port} ")
        temps = "".join(f"{k}_temp_path {root / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (root / "nginx.conf").write_text(f"pid {root / 'nginx.pid'};\ndaemon off;\nevents {{}}\nhttp {{\n{temps}{block}}}\n")
        return [_program("nginx"), "-c", str(root / "nginx.conf"), "-p", str(root), "-e", str(root / "error.log")]
    block = _readme_block("lb_policy ip_hash").replace("127.0.0.1:8502 127.0.0.1:8503",
                                                        " ".join(f"127.0.0.1:{p}" for p in ports))
    block = block.replace("study.example.org {", f"{{\n    auto_https off\n    admin off\n}}\nhttp://study.example.org:{listen} {{")
    (root / "Caddyfile").write_text(block)
    return [_program("caddy"), "run", "--config", str(root / "Caddyfile"), "--adapter", "caddyfile"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_readme_proxy_examples_carry_participants_to_sticky_workers(workers, tmp_path, kind):
    """The README's block, as it is (plain HTTP here), before the two workers: participants whose browsers name the
    study's host (Host and Origin study.example.org) finish through it; each source address's sessions all go to one
    worker, and the workers between them get several; the session cap sees the source address (a 4th session from
    one refused). Without `proxy_set_header Host $http_host` nginx's WebSockets got 403 and no one finished."""
    ports = sorted(workers["bases"])
    listen = free_ports(1)
    command = _proxy_config(kind, tmp_path, ports, listen)
    net = {"nginx": 60, "caddy": 80}[kind]  # source addresses 127.<net + i>.0.1: each run its own
    env = {k: v for k, v in os.environ.items() if k != "NGINX"}  # nginx reads $NGINX as inherited sockets
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    proxy = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, via = f"http://study.example.org:{listen}", {"host": "127.0.0.1", "port": listen}  # a browser's names
    query = f"study=proxy&key={workers['keys']['proxy']}"
    table = next(Path(d) / "sessions.db" for d in SHM.glob("study-serve-*")
                 if (Path(d) / "supervisor.pid").read_text() == str(workers["proc"].pid))

    async def scenario():
        deadline = time.monotonic() + 30
        while not await visit(url, f"{query}&pid=warm", None, origin=url, **via):
            assert time.monotonic() < deadline and proxy.poll() is None, f"{kind} carried no page within 30 s"
            await asyncio.sleep(0.5)
        bots = [Participant({listen: url}, query, f"{kind}{i}", f"127.{net + 10 + i}.0.1", seed=i, think_s=(0.05, 0.2),
                            feedback_s=(0, 0.05), give_up_s=120, forwarded=False, origin=url, **via,
                            local_addr=(f"127.{net + 10 + i}.0.1", 0)) for i in range(4)]
        results = await asyncio.gather(*(b.run() for b in bots))
        held = []
        for source in range(8):
            for _ in range(3):
                session = await Session.open(url, f"{query}&pid=holder{source}", None, origin=url, **via,
                                             local_addr=(f"127.{net + source}.0.1", 0))
                await session.run()
                held.append(session)
        conn = sqlite3.connect(table)
        rows = conn.execute("SELECT client, group_concat(DISTINCT worker), count(*) FROM sessions GROUP BY client "
                            "HAVING count(*) = 3").fetchall()
        conn.close()
        fourth = await Session.open(url, f"{query}&pid=holder0", None, origin=url, **via, local_addr=(f"127.{net}.0.1", 0))
        page = await fourth.run()
        for session in [*held, fourth]:
            await session.close()
        return results, rows, page

    try:
        results, rows, page = asyncio.run(scenario())
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    stored = _stored(workers["db"], "proxy")
    assert all(r.completed for r in results), [r.error for r in results]
    assert all(stored[r.pid] == r.given for r in results)
    assert len(rows) == 8 and all("," not in workers_of for _, workers_of, _ in rows)  # one worker per source
    assert {workers_of for _, workers_of, _ in rows} == {"0", "1"}
    assert any("Too many study pages" in t for t in page.texts)


def test_a_health_check_answered_by_something_that_is_not_http_reads_as_unhealthy():
    """Another program on a worker's port that echoes the request back (seen while Ray and other servers ran
    beside the tests) made the supervisor die with http.client.BadStatusLine instead of waiting."""
    import socket
    import threading

    from study.workers import healthy

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(1024))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        assert healthy("127.0.0.1", port, timeout_s=5) is False
    finally:
        thread.join(10)
        listener.close()
