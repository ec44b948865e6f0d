"""Load and failure tests: 50 simulated participants at once through the page's own calls."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import test_study_support as support

from study import get_study, open_db
from study.db import integrity_problems
from study.simulate import simulate_participant

cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
N_PARTICIPANTS = 50
# 3 conditions x 20 items, 6 per participant, k = 5 -> exactly 50 participants fill the study
DESIGN = {"labels_per_item": 5, "items_per_condition": 20, "items_per_participant": 6, "catch_per_participant": 2}
PER_PARTICIPANT = 3 + 6 + 2  # practice + trials + catch


def check_database(db_path: Path, acked: dict[int, int], *, expect_complete: bool) -> None:
    db = open_db(db_path, create=False)
    assert integrity_problems(db) == []
    stored = dict(db.execute("SELECT assignment_id, label FROM responses").fetchall())
    assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == len(stored)
    assert db.execute("SELECT count(*) FROM (SELECT 1 FROM responses GROUP BY participant_id, item_id "
                      "HAVING count(*) > 1)").fetchone()[0] == 0  # zero duplicates
    for assignment_id, label in acked.items():  # zero lost: every acknowledged answer is there, unchanged
        assert stored.get(assignment_id) == label
    # every consented participant got a complete, balanced list (allocation is all or nothing)
    study = get_study(db, "s1")
    for (pid,) in db.execute("SELECT id FROM participants WHERE consent_at IS NOT NULL").fetchall():
        rows = db.execute("SELECT i.role, i.condition, i.test_index FROM assignments a JOIN items i ON i.id = a.item_id "
                          "WHERE a.participant_id = ?", [pid]).fetchall()
        assert len(rows) == PER_PARTICIPANT
        assert Counter(r[1] for r in rows if r[0] == "trial") == {c: 2 for c in study.conditions}
        assert len({r[2] for r in rows}) == len(rows)
    if expect_complete:
        assert len(stored) == N_PARTICIPANTS * PER_PARTICIPANT
        per_item = Counter(r[0] for r in db.execute(
            "SELECT r.item_id FROM responses r JOIN items i ON i.id = r.item_id WHERE i.role = 'trial'"))
        n_trial_items = db.execute("SELECT count(*) FROM items WHERE role = 'trial'").fetchone()[0]
        assert len(per_item) == n_trial_items and set(per_item.values()) == {5}  # balance as designed
    db.close()


def test_fifty_concurrent_participants_threads(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, **DESIGN)
    acked: dict[int, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(N_PARTICIPANTS)

    def run(pid: str) -> None:
        try:
            start.wait(timeout=30)
            answers = simulate_participant(db_path, "s1", pid, double_submit=True)
            with lock:
                acked.update(answers)
        except BaseException as e:  # collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f"t{i:02d}",)) for i in range(N_PARTICIPANTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(acked) == N_PARTICIPANTS * PER_PARTICIPANT
    check_database(db_path, acked, expect_complete=True)


def _simulator(db_path: Path, ids: list[str], threads: int, think_ms: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "study.simulate", "--db", str(db_path), "--study", "s1", "--ids", ",".join(ids),
         "--threads", str(threads), "--think-ms", str(think_ms), "--double"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _acks(lines) -> dict[int, int]:
    acked = {}
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "ACK":
            acked[int(parts[2])] = int(parts[3])
    return acked


def test_fifty_concurrent_participants_processes(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, **DESIGN)
    ids = [f"p{i:02d}" for i in range(N_PARTICIPANTS)]
    procs = [_simulator(db_path, ids[k::5], threads=10) for k in range(5)]  # 5 processes x 10 threads
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (out[-2000:], err[-2000:])
        outputs.append(out)
    acked = _acks("\n".join(outputs).splitlines())
    assert len(acked) == N_PARTICIPANTS * PER_PARTICIPANT
    check_database(db_path, acked, expect_complete=True)


def test_killing_the_process_loses_at_most_the_answer_in_flight(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, **DESIGN)
    proc = _simulator(db_path, [f"k{i:02d}" for i in range(N_PARTICIPANTS)], threads=1, think_ms=4.0)
    lines = []
    deadline = time.monotonic() + 60
    try:
        while len(lines) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert len(lines) >= 40, proc.stderr.read()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lines += proc.stdout.read().splitlines()  # anything acknowledged just before the kill
    acked = _acks(lines)
    check_database(db_path, acked, expect_complete=False)
    db = open_db(db_path, create=False)
    stored = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    assert len(acked) <= stored <= len(acked) + 1  # at most the one answer in flight is unacknowledged
    db.close()


def test_database_locked_by_other_writer_waits_instead_of_failing(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, **DESIGN)
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # someone holds the write lock for a moment
    threading.Timer(0.5, lambda: blocker.execute("COMMIT")).start()
    t0 = time.monotonic()
    answers = simulate_participant(db_path, "s1", "patient")
    assert len(answers) == PER_PARTICIPANT and time.monotonic() - t0 >= 0.4


def test_simulator_on_foreign_file_fails_clearly(tmp_path):
    content = b"garbage" * 100
    path = tmp_path / "x.db"
    path.write_bytes(content)
    from study import StudyDBError
    with pytest.raises(StudyDBError):
        simulate_participant(path, "s1", "nobody")
    assert path.read_bytes() == content
