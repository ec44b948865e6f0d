"""The participant server's sessions: nothing grows per visit (shared connections, no file descriptor kept by
a visitor who left), a cap per client address, sessions that never consent are closed after an idle time,
and refusals are logged once per interval."""
from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import test_study_support as support
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit_server import participant_server_process

from study import get_study, open_db
from study.errors import RefusalLog
from study.guard import SessionGuard, client_address
from study.pool import ConnectionPool

cifar, study_sets = support.cifar, support.study_sets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_guard_caps_per_address_and_idles_unconsented_sessions():
    clock = Clock()
    guard = SessionGuard(per_address=2, idle_before_consent_s=60, clock=clock)
    assert guard.admit("a1", "10.0.0.1") and guard.admit("a2", "10.0.0.1")
    assert not guard.admit("a3", "10.0.0.1")  # one address cannot open more
    assert guard.admit("a1", "10.0.0.1")  # a known session's reruns pass
    assert guard.admit("b1", "10.0.0.2")  # nor does it crowd out another address
    guard.consented("a1")
    clock.now += 61
    assert sorted(guard.idle()) == ["a2", "b1"]  # the consented one stays
    assert guard.gone(["a2"]) == [] and guard.gone(["a2", "x"]) == ["a2"]  # left at two sweeps in a row
    guard.keep_only(["a1", "b1"])  # a2's browser left
    assert guard.has_room("a3", "10.0.0.1") and guard.admit("a3", "10.0.0.1") and len(guard) == 3


def test_refusals_are_logged_once_per_interval(caplog, monkeypatch):
    # a page run earlier in the session may have sent the study's log to stderr only (configure_logging)
    monkeypatch.setattr(logging.getLogger("study"), "propagate", True)
    clock = Clock()
    refusals = RefusalLog(interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="study"):
        written = [refusals.refused("over cap") for _ in range(500)]
        clock.now += 61
        written.append(refusals.refused("over cap"))
        written.append(refusals.refused("idle"))
    assert written.count(True) == 3 and len(caplog.records) == 3
    assert "refused 500 x over cap" in caplog.records[1].getMessage()  # the second line counts what it held back


def test_client_address_trusts_forwarded_only_from_a_local_proxy():
    assert client_address("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 5.6.7.8"}) == "5.6.7.8"
    assert client_address("9.9.9.9", {"X-Forwarded-For": "5.6.7.8"}) == "9.9.9.9"  # a visitor cannot pick an address
    assert client_address("127.0.0.1", {"X-Forwarded-For": "not-an-ip"}) == "127.0.0.1"
    assert client_address(None, {}) == "unknown"


def test_pool_shares_a_few_connections(tmp_path, study_sets):
    support.make_study(tmp_path / "s.db", study_sets)
    pool = ConnectionPool(tmp_path / "s.db", max_open=3)
    seen = []

    def visit() -> None:
        with pool.connection() as db:
            seen.append(get_study(db, "s1").slug)
            time.sleep(0.01)

    threads = [threading.Thread(target=visit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["s1"] * 40 and pool.opened <= 3
    with pytest.raises(ZeroDivisionError), pool.connection() as db:
        db.execute("BEGIN IMMEDIATE")
        raise ZeroDivisionError
    with pool.connection() as db:  # handed back without the failed run's transaction
        assert not db.conn.in_transaction
    pool.close()


# ------------------------------------------------------------------------------------------------ live server
LABEL_PAGE = Path(__file__).resolve().parents[1] / "pages" / "study_label.py"
ROUNDS, SESSIONS = 100, 8


def _page_through_widget_declaration():
    """The labeling page's code from its first line through the statement that declares the trial widget."""
    tree = ast.parse(LABEL_PAGE.read_text(encoding="utf-8"))
    last = next(i for i, node in enumerate(tree.body) if "declare_component" in ast.unparse(node))
    return compile(ast.Module(body=tree.body[:last + 1], type_ignores=[]), str(LABEL_PAGE), "exec")


def test_sessions_starting_together_all_get_the_trial_widget():
    """CI saw "RuntimeError: module is None" on the participant page: declare_component finds the page's module
    through inspect.getmodule, whose file cache fills without a lock, so two sessions starting at once could race.
    Eight sessions start together on a fresh cache, 100 times over; every one gets its widget."""
    code = _page_through_widget_declaration()
    failures: list[BaseException] = []
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often, as under a loaded server
    try:
        _start_sessions_together(code, failures)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not failures, f"{len(failures)} of {ROUNDS * SESSIONS} sessions failed: {failures[0]!r}"


def _start_sessions_together(code, failures: list[BaseException]) -> None:
    for _ in range(ROUNDS):
        inspect._filesbymodname.clear()  # as in a freshly started server
        inspect.modulesbyfile.clear()
        start = threading.Barrier(SESSIONS)

        def session(start: threading.Barrier = start) -> None:
            start.wait()
            try:
                scope = {"__name__": "__main__", "__file__": str(LABEL_PAGE)}
                exec(code, scope)
                assert scope["trial_widget"].name == "randmask_study_label.study_trial"
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                failures.append(e)

        threads = [threading.Thread(target=session) for _ in range(SESSIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _visit(url: str, query: str, hold_s: float = 0.0, address: str | None = None) -> int | None:
    """One browser-less session: run the page with `query`, wait for the run to finish, hold, leave.
    Returns the close code if the server closed the connection. `address`: the client address the server
    sees (in X-Forwarded-For, as from a local proxy)."""
    async with websockets.connect(url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                                  max_size=None,
                                  additional_headers={"X-Forwarded-For": address} if address else {}) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = query
        await ws.send(msg.SerializeToString())
        try:
            while True:
                forward = ForwardMsg()
                forward.ParseFromString(await asyncio.wait_for(ws.recv(), 30))
                if forward.WhichOneof("type") == "script_finished":
                    break
            deadline = time.monotonic() + hold_s
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            return None
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else -1
    return None


async def _visits(url: str, queries: list[str], at_once: int, hold_s: float = 0.0) -> list[int | None]:
    """Each visit from its own client address (many visitors, not one address's flood)."""
    gate = asyncio.Semaphore(at_once)

    async def one(n: int, query: str) -> int | None:
        async with gate:
            return await _visit(url, query, hold_s, address=f"198.51.{100 + n // 250}.{n % 250 + 1}")

    return await asyncio.gather(*(one(n, q) for n, q in enumerate(queries)))


@pytest.fixture
def served_study(tmp_path, study_sets):
    support.make_study(tmp_path / "s.db", study_sets)
    key = get_study(open_db(tmp_path / "s.db"), "s1").link_key
    return tmp_path / "s.db", key


@pytest.mark.slow
def test_sessions_leave_no_file_descriptors_behind(tmp_path, served_study):
    """Old code: every session opened its own connection before the key was checked and kept it (+2 descriptors a
    visit). Now 120 visits (half with a wrong key) leave the server's descriptors where they were."""
    db_path, key = served_study
    with participant_server_process(db_path, tmp_path / "server.log") as (url, proc):
        asyncio.run(_visits(url, [f"study=s1&key={key}&pid=warm{i}" for i in range(4)], 4))
        time.sleep(1)
        before = _fds(proc.pid)
        queries = [f"study=s1&key={key if i % 2 else 'f' * 32}&pid=visitor{i}" for i in range(120)]
        asyncio.run(_visits(url, queries, 8))
        deadline = time.monotonic() + 30  # the server shuts left sessions down after a sweep or two (5 s each)
        while (after := _fds(proc.pid)) > before + 3 and time.monotonic() < deadline:
            time.sleep(1)
        assert after <= before + 3, (before, after)
        assert "Traceback" not in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_sessions_per_address_capped_and_idle_ones_closed(tmp_path, served_study):
    db_path, key = served_study
    env = {**os.environ, "STUDY_SESSIONS_PER_ADDRESS": "3", "STUDY_IDLE_BEFORE_CONSENT_S": "3"}
    query = f"study=s1&key={key}&pid=someone"
    with participant_server_process(db_path, tmp_path / "server.log", env=env) as (url, proc):
        async def scenario():
            holders = [asyncio.create_task(_visit(url, query, hold_s=20)) for _ in range(3)]
            await asyncio.sleep(1.5)
            refused = await _visit(url, query, hold_s=10)  # a fourth from the same address
            # nobody consented: the server closes the held sessions after the idle time (3 s + one sweep)
            return refused, await asyncio.gather(*holders)
        started = time.monotonic()
        refused, held = asyncio.run(scenario())
        assert refused == 1008 and held == [1008] * 3 and time.monotonic() - started < 15
        assert asyncio.run(_visit(url, query)) is None  # room again once they are gone
    log = (tmp_path / "server.log").read_text()
    assert log.count("over the per-address cap") == 1 and "Traceback" not in log
