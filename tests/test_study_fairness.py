"""Nobody can slow others on the participant server: rerun requests are budgeted per browser session, per
participant (across their tabs) and per client address (study.guard.RerunGate), excess ones wait folded into
one, websockets are read no faster than their budgets (MessageIntake), and message kinds the page never sends
are dropped. A genuine participant answering every 300 ms is never slowed; a spammer slows only itself."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_study_support as support
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit_server import participant_server_process
from study_ws import Tab, answer_for, back_rerun, click, component_value, first_trials

from study import get_study, open_db
from study.guard import (
    RERUNS_PER_ADDRESS,
    RERUNS_PER_PARTICIPANT,
    RERUNS_PER_SESSION,
    WHOLE_PAGE_COST,
    MessageIntake,
    Rate,
    RefusalLog,
    RerunGate,
    fold_reruns,
    participant_key,
)

cifar, study_sets = support.cifar, support.study_sets
TESTS = Path(__file__).resolve().parent


class Loop:
    """A fake clock and the callbacks scheduled on it, run in time order by `advance`."""

    def __init__(self) -> None:
        self.now, self.timers = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, callback) -> None:
        self.timers.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0]):
            at, callback = due[0]
            self.timers.remove(due[0])
            self.now = max(self.now, at)
            callback()
        self.now = end


def _gate(loop: Loop) -> RerunGate:
    return RerunGate(loop.schedule, clock=loop, refusals=RefusalLog(clock=loop))


def _rerun(value: int, fragment: str = "f1", clicked: str | None = None) -> BackMsg:
    msg = BackMsg()
    msg.ParseFromString(back_rerun("study=s1&pid=p", [component_value("trials", {"seq": value})]
                                   + ([click(clicked)] if clicked else []), fragment))
    return msg


def test_genuine_fast_participant_is_never_slowed():
    """One answer every 300 ms for five minutes, each sent at once."""
    loop = Loop()
    gate, delivered = _gate(loop), []
    for n in range(1000):
        assert gate.offer("tab", "10.0.0.1", ("s1", "p"), _rerun(n), delivered.append)
        loop.advance(0.3)
    assert len(delivered) == 1000 and gate.waiting() == 0


def test_spam_waits_folded_and_loses_no_click():
    """A tab sending 1000 reruns a second gets its session's rate, not more; what waits is folded into one
    request holding the latest widget value and every click on the way."""
    loop = Loop()
    gate, delivered = _gate(loop), []
    for n in range(10_000):  # 10 s
        gate.offer("tab", "10.0.0.1", ("s1", "p"), _rerun(n, clicked="consent" if n == 4321 else None),
                   delivered.append)
        loop.advance(0.001)
    loop.advance(5)
    expected = RERUNS_PER_SESSION.burst + 10 * RERUNS_PER_SESSION.per_s
    assert expected - 2 <= len(delivered) <= expected + 2, len(delivered)
    assert '"seq": 9999' in delivered[-1].rerun_script.widget_states.widgets[0].json_value
    clicks = [w.id for m in delivered for w in m.rerun_script.widget_states.widgets if w.trigger_value]
    assert clicks == ["consent"] and gate.waiting() == 0


def test_whole_page_reruns_cost_two_of_the_widgets():
    loop = Loop()
    gate, delivered = _gate(loop), []
    for n in range(10_000):
        gate.offer("tab", "10.0.0.1", ("s1", "p"), _rerun(n, fragment=""), delivered.append)
        loop.advance(0.001)
    loop.advance(5)
    expected = (RERUNS_PER_SESSION.burst + 10 * RERUNS_PER_SESSION.per_s) / WHOLE_PAGE_COST
    assert expected - 2 <= len(delivered) <= expected + 2, len(delivered)


def test_tabs_share_their_participant_and_address_budgets_but_not_others():
    loop = Loop()
    gate, spam, other = _gate(loop), [], []
    for n in range(5000):  # 5 s: four tabs of one participant, flat out
        gate.offer(f"tab{n % 4}", "10.0.0.1", ("s1", "spammer"), _rerun(n), spam.append)
        if n % 1000 == 0:  # a participant elsewhere: served at once throughout
            assert gate.offer("other", "10.0.0.2", ("s1", "other"), _rerun(n), other.append)
        loop.advance(0.001)
    allowed = RERUNS_PER_PARTICIPANT.burst + 5 * RERUNS_PER_PARTICIPANT.per_s
    assert len(spam) <= allowed + 4  # four tabs do not multiply the budget
    # ... nor do four participant ids from one address
    loop.advance(60)
    spam.clear()
    for n in range(5000):
        gate.offer(f"tab{n % 4}", "10.0.0.1", ("s1", f"id{n % 4}"), _rerun(n), spam.append)
        loop.advance(0.001)
    assert len(spam) <= RERUNS_PER_ADDRESS.burst + 5 * RERUNS_PER_ADDRESS.per_s + 4
    assert len(other) == 5


def test_fold_reruns_keeps_newest_values_and_older_clicks():
    older, newer = _rerun(1, clicked="start"), _rerun(2)
    folded = fold_reruns(older, newer)
    states = {w.id: w for w in folded.rerun_script.widget_states.widgets}
    assert '"seq": 2' in states["trials"].json_value and states["start"].trigger_value
    assert folded.rerun_script.fragment_id == "f1"
    assert fold_reruns(_rerun(1, fragment=""), newer).rerun_script.fragment_id == ""  # a whole-page rerun stays one
    assert fold_reruns(_rerun(1, fragment="f2"), newer).rerun_script.fragment_id == ""
    assert not any(w.trigger_value for w in fold_reruns(_rerun(1), newer).rerun_script.widget_states.widgets)


def test_participant_key():
    assert participant_key("study=s1&key=k&pid=abc") == ("s1", "abc")
    assert participant_key("study=s1&PROLIFIC_PID=abc&x=1") == ("s1", "abc")
    assert participant_key("study=s1&pid=a&pid=b") is None and participant_key("pid=a%0A") is None
    assert participant_key("pid=" + "a" * 5000) is None


def test_intake_paces_a_flood_and_refuses_connection_storms(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("study"), "propagate", True)
    loop = Loop()
    intake = MessageIntake(per_connection=Rate(10, 20), address=Rate(30, 60), connections=Rate(0.5, 5),
                           clock=loop, refusals=RefusalLog(clock=loop))
    admitted, budget = intake.connect("10.0.0.1")
    assert admitted
    delays = [intake.delay(budget, "10.0.0.1") for _ in range(120)]  # 120 messages at once
    assert delays[:20] == [0.0] * 20 and delays[-1] == pytest.approx(10.0)  # then 10 a second
    _, elsewhere = intake.connect("10.0.0.2")
    assert intake.delay(elsewhere, "10.0.0.2") == 0  # nobody else waits
    with caplog.at_level(logging.WARNING, logger="study"):
        results = [intake.connect("10.0.0.1")[0] for _ in range(20)]
    assert results.count(True) == 4 and not results[-1]  # 5 at once, one already made
    loop.advance(2.0)
    assert intake.connect("10.0.0.1")[0]  # a refused attempt took nothing: the rate is back
    assert sum("websocket connections over the per-address rate" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------------ live server
@pytest.fixture
def served(tmp_path, study_sets):
    support.make_study(tmp_path / "s.db", study_sets, items_per_participant=12, items_per_condition=24)
    return tmp_path / "s.db", get_study(open_db(tmp_path / "s.db"), "s1").link_key


async def _genuine(url: str, key: str, pid: str, address: str, pause_s: float) -> tuple[float, list[float], bool]:
    """Consent and answer every image, one every `pause_s`: (seconds from link to first image, each answer's
    round trip until the server acknowledged it, whether the completion page came)."""
    started = time.monotonic()
    async with Tab(url, f"study=s1&key={key}&pid={pid}", timeout_s=120, address=address) as tab:
        page = await first_trials(tab)
        first = time.monotonic() - started
        round_trips = []
        while page.widget_args and page.widget_args["trials"]:
            await asyncio.sleep(pause_s)
            trial = page.widget_args["trials"][0]
            sent = time.monotonic()
            page = await tab.answer([answer_for(trial, label=trial["n"] % 10)])
            round_trips.append(time.monotonic() - sent)
            assert page.says("finished") or trial["id"] in page.widget_args["handled"]
        return first, round_trips, page.says("finished")


def _p95(values: list[float]) -> float:
    return sorted(values)[round(0.95 * (len(values) - 1))]


def _stored(db_path: Path, pid: str) -> int:
    db = open_db(db_path)
    try:
        return db.execute("SELECT count(*) FROM responses r JOIN participants p ON p.id = r.participant_id "
                          "WHERE p.external_id = ?", [pid]).fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow
def test_four_spamming_tabs_do_not_slow_a_new_participant(tmp_path, served):
    """One consented participant's four tabs send widget messages flat out from their own process (before the
    gate: a new participant's first image took 64 s). Meanwhile a new participant elsewhere consents and
    answers every image at a fast human pace (300 ms): first image within 10 s (the issue's target), answer ->
    acknowledged within 300 ms at the median, every answer stored, the completion page reached. The p95 is
    printed beside the same flow without spam, not asserted: on this shared 2-core machine (load 8-12) it
    swings 4x between identical runs, spam or none."""
    db_path, key = served
    with participant_server_process(db_path, tmp_path / "server.log") as (url, proc):
        asyncio.run(_genuine(url, key, "warm", "198.51.100.1", 0.0))  # imports, caches: not part of the test
        _, quiet, _ = asyncio.run(_genuine(url, key, "quiet", "198.51.100.3", 0.3))  # the machine's own pace
        spammer = subprocess.Popen([sys.executable, str(TESTS / "study_ws.py"), url, f"study=s1&key={key}&pid=spam",
                                    "4", "40", "500", "203.0.113.9"], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        try:
            time.sleep(6)  # the spam is on
            assert spammer.poll() is None
            first, round_trips, finished = asyncio.run(_genuine(url, key, "newcomer", "198.51.100.2", 0.3))
            spamming_throughout = spammer.poll() is None
        finally:
            out, _ = spammer.communicate(timeout=120)
    sent = int(out.split()[-1])
    median = sorted(round_trips)[len(round_trips) // 2]
    print(f"spam: {sent} messages; newcomer: first image {first:.2f} s, answer p50 {median:.3f} s p95 "
          f"{_p95(round_trips):.3f} s (without spam: p50 {sorted(quiet)[len(quiet) // 2]:.3f} s p95 {_p95(quiet):.3f} s), "
          f"load {os.getloadavg()[0]:.1f}")
    assert first < 10, f"first image after {first:.1f} s"
    assert median < 0.3 and finished
    assert sent > 10_000 and spamming_throughout  # else the test proved nothing
    assert _stored(db_path, "newcomer") == len(round_trips) == 17  # 3 practice, 12 trials, 2 catch
    log = (tmp_path / "server.log").read_text()
    assert 1 <= log.count("rerun requests over budget (delayed)") <= 2  # once a minute at most, with a count
    assert "without a client address" not in log and "Traceback" not in log


@pytest.mark.slow
def test_clear_cache_from_a_visitor_is_dropped(tmp_path, served):
    """Streamlit's clear_cache message empties the server's shared resources, the session guard among them:
    a visitor sending it got a fresh per-address cap. The participant server drops it (and any kind the page
    never sends)."""
    db_path, key = served
    env = {**os.environ, "STUDY_SESSIONS_PER_ADDRESS": "2"}
    query = f"study=s1&key={key}&pid=someone"

    async def scenario() -> int | None:
        async with Tab(url, query) as one, Tab(url, query) as two:
            await one.run()
            await two.run()
            for kind in ("clear_cache", "load_git_info", "stop_script"):
                msg = BackMsg()
                setattr(msg, kind, True)
                await one.ws.send(msg.SerializeToString())
            await one.run()  # the page runs again after them
            async with Tab(url, query) as three:
                page = await three.run()
                try:  # a refused session is told so, then closed
                    await asyncio.wait_for(three.ws.wait_closed(), 10)
                except TimeoutError:
                    return None
                assert page.says("Too many study pages")
                return three.ws.close_code

    with participant_server_process(db_path, tmp_path / "server.log", env=env) as (url, _):
        code = asyncio.run(scenario())
    log = (tmp_path / "server.log").read_text()
    assert code == 1008  # still over the cap of 2
    assert log.count("browser messages the participant page never sends") == 1 and "Traceback" not in log


def test_address_budgets_grow_with_the_sessions_an_address_may_open(monkeypatch):
    from study.guard import per_address

    monkeypatch.setenv("STUDY_SESSIONS_PER_ADDRESS", "80")  # a lab behind one NAT
    assert per_address(Rate(8, 24)) == Rate(32, 96)
    monkeypatch.setenv("STUDY_SESSIONS_PER_ADDRESS", "3")  # fewer sessions: never below the default budget
    assert per_address(Rate(8, 24)) == Rate(8, 24)
