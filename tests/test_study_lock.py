"""A study command that finds the database's write lock held by another process says so at once (which file,
that it waits), then gives up in one line after a bounded, configurable wait, having changed nothing."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_study_support import cifar, make_study, study_sets  # noqa: F401  (fixtures)

from study.cli import main
from study.db import MAX_LOCK_WAIT_S, StudyDBError, lock_wait_s

ROOT = Path(__file__).resolve().parents[1]


def _status(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT status FROM studies WHERE slug = 's1'").fetchone()[0]
    finally:
        conn.close()


def test_close_under_a_held_write_lock_speaks_then_gives_up(tmp_path, study_sets):  # noqa: F811
    db = tmp_path / "s.db"
    make_study(db, study_sets)
    holder = sqlite3.connect(db, isolation_level=None)  # another connection, as a second process would hold it
    holder.execute("BEGIN IMMEDIATE")
    try:
        process = subprocess.Popen([sys.executable, "-m", "study", "close", "--db", str(db), "--study", "s1"],
                                   cwd=ROOT, env={**os.environ, "STUDY_LOCK_WAIT_S": "4"}, stderr=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        first = process.stderr.readline()
        began = time.monotonic()
        rest = process.stderr.read()
        code = process.wait(timeout=60)
        ended = time.monotonic() - began  # from the note to the end: the rest of the wait
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert first.startswith("note: ") and str(db) in first and "locked" in first and "waiting" in first, first
    assert code == 2 and rest.count("\n") == 1 and rest.startswith("error: ") and str(db) in rest, rest
    assert "still locked" in rest and "STUDY_LOCK_WAIT_S" in rest and "Traceback" not in rest
    assert 2 <= ended < 30, ended
    assert _status(db) == "open"
    assert main(["close", "--db", str(db), "--study", "s1"]) == 0  # lock released: it goes through
    assert _status(db) == "closed"


def test_the_wait_is_an_option_too(tmp_path, study_sets, capsys):  # noqa: F811
    db = tmp_path / "s.db"
    make_study(db, study_sets)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        code = main(["--lock-wait", "0.5", "exclude", "--db", str(db), "--study", "s1", "--participant", "x"])
        took = time.monotonic() - began
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and err[0].startswith("note: ") and err[1].startswith("error: "), err
    assert "still locked" in err[1] and took < 5, (err, took)


def test_the_wait_is_reported_at_once_and_bounded(tmp_path, study_sets):  # noqa: F811
    """Timed in process (a new Python's start-up on a loaded machine is not the command's wait)."""
    from study.db import open_db, speaking_lock_waits
    from study.design import set_status

    db_path = tmp_path / "s.db"
    make_study(db_path, study_sets)
    db = open_db(db_path)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    said: list[tuple[float, str]] = []
    began = time.monotonic()
    try:
        with speaking_lock_waits(2.0, lambda line: said.append((time.monotonic() - began, line))), \
                pytest.raises(StudyDBError, match="still locked"):
            set_status(db, "s1", "closed")
        ended = time.monotonic() - began
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.close()
    assert len(said) == 1 and said[0][0] < 5 and str(db_path) in said[0][1], said
    assert 2 <= ended < 10, ended


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "1e9"])
def test_a_bad_wait_is_refused(value, monkeypatch):
    with pytest.raises(StudyDBError, match="--lock-wait"):
        lock_wait_s(value)
    monkeypatch.setenv("STUDY_LOCK_WAIT_S", value)
    with pytest.raises(StudyDBError, match="STUDY_LOCK_WAIT_S"):
        lock_wait_s()


def test_the_default_wait(monkeypatch):
    monkeypatch.delenv("STUDY_LOCK_WAIT_S", raising=False)
    assert lock_wait_s() == 60
    monkeypatch.setenv("STUDY_LOCK_WAIT_S", "2.5")
    assert lock_wait_s() == 2.5 and lock_wait_s("7") == 7


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30) | st.floats().map(repr) | st.integers(-10, 10**6).map(str))
def test_any_wait_is_a_bounded_number_of_seconds_or_one_line(value):
    """Whatever --lock-wait is given: a positive finite wait of at most a day, or one line naming the option."""
    try:
        seconds = lock_wait_s(value)
    except StudyDBError as exc:
        message = str(exc)
        assert "--lock-wait" in message and "\n" not in message and "\r" not in message, message
        return
    assert 0 < seconds <= MAX_LOCK_WAIT_S and seconds == float(value)
