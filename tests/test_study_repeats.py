"""A trial answered after a reload is marked in responses.csv (`earlier_servings`): the server records, before a
page gets a trial, which page (browser session) was sent it, so an answer lost in a reload and asked again is
not silently a first answer. The record survives kill -9 and old databases migrate to it."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pandas as pd
import pytest
import test_study_support as support
from streamlit_server import participant_server_process
from study_ws import Tab, answer_for, first_trials

from study import enrol, get_study, open_db, record_answer
from study.export import export_study, responses_frame
from study.participant import record_servings
from study.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from study.session import widget_args

cifar, study_sets = support.cifar, support.study_sets


def _marks(db, study) -> dict[int, object]:
    """assignment id -> earlier_servings of its answer in the export (None: empty)."""
    frame = responses_frame(db, study)
    by_response = dict(db.execute("SELECT id, assignment_id FROM responses").fetchall())
    return {by_response[r]: (None if pd.isna(n) else int(n))
            for r, n in zip(frame["response_id"], frame["earlier_servings"], strict=True)}


def _answer(db, participant_id: int, assignment_id: int) -> None:
    """Store an answer in a millisecond of its own (times are stored to the millisecond), as a person's would be."""
    time.sleep(0.002)
    record_answer(db, participant_id, assignment_id, 1, rt_ms=500.0, mode="unlimited", input="click")
    time.sleep(0.002)


def test_servings_mark_answers_given_after_another_page_was_sent_the_trial(tmp_path, study_sets):
    support.make_study(tmp_path / "s.db", study_sets, practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p, other = enrol(db, study, "p1"), enrol(db, study, "p2")
    served: set[int] = set()
    first = widget_args(db, study, p.id, page="page-a", served=served)["trials"]
    ids = [t["id"] for t in first]
    assert served == set(ids) and len(ids) == 3
    widget_args(db, study, p.id, page="page-a", served=served)  # the same page again: nothing new
    record_servings(db, p.id, "page-a", ids)  # nor twice the same rows
    record_servings(db, p.id, "page-x", [widget_args(db, study, other.id)["trials"][0]["id"]])  # not p's: ignored
    assert db.execute("SELECT count(*) FROM servings").fetchone()[0] == 3
    db.execute("UPDATE servings SET served_at = '2000-01-01T00:00:00.000+00:00'")  # well before any answer
    _answer(db, p.id, ids[0])  # answered on the page that got it first
    record_servings(db, p.id, "late-tab", [ids[0]])  # a tab that read its window before that answer was stored
    db.execute("UPDATE servings SET served_at = (SELECT created_at FROM responses) WHERE page = 'late-tab'")  # a tie
    widget_args(db, study, p.id, page="page-b", served=set())  # a reload: the next three again, on a new page
    _answer(db, p.id, ids[1])
    _answer(db, p.id, ids[2])
    later = widget_args(db, study, p.id, page="page-b", served=set())["trials"][0]["id"]
    _answer(db, p.id, later)
    assert _marks(db, study) == {ids[0]: 0, ids[1]: 1, ids[2]: 1, later: 0}


def test_answer_resent_by_the_page_that_showed_it_is_not_a_repeat(tmp_path, study_sets):
    """After a server restart the same browser page reconnects as a new session and resends its unacknowledged
    answer before anything is served to the new session: answered where it was shown, so 0."""
    support.make_study(tmp_path / "s.db", study_sets, practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p = enrol(db, study, "p1")
    trial = widget_args(db, study, p.id, page="before-restart", served=set())["trials"][0]["id"]
    _answer(db, p.id, trial)  # the new session stores it first
    widget_args(db, study, p.id, page="after-restart", served=set())
    assert _marks(db, study) == {trial: 0}


def test_version_3_database_migrates_and_its_answers_stay_unmarked(tmp_path, study_sets):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, practice=False)
    db = open_db(path)
    study = get_study(db, "s1")
    p = enrol(db, study, "old-timer")
    trial = widget_args(db, study, p.id)["trials"][0]["id"]
    _answer(db, p.id, trial)
    db.close()
    conn = sqlite3.connect(path, isolation_level=None)  # as the code before schema 4 left it
    conn.execute("DROP TABLE servings")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    db = open_db(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS) == 4
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    study = get_study(db, "s1")
    nxt = widget_args(db, study, p.id, page="new-page", served=set())["trials"][0]["id"]
    _answer(db, p.id, nxt)
    assert _marks(db, study) == {trial: None, nxt: 0}  # unknown for the old answer, not a false 0
    export_study(db, tmp_path / "out", "s1", n_boot=10)
    assert pd.read_csv(tmp_path / "out" / "responses.csv")["earlier_servings"].isna().tolist() == [True, False]
    from study.cli import main
    assert main(["check", "--db", str(path)]) == 0


# ------------------------------------------------------------------------------------------------ live server
@pytest.mark.slow
def test_reload_after_kill_9_marks_the_trials_the_earlier_page_had(tmp_path, study_sets):
    """A participant's page gets its first trials; the server is killed (kill -9) before any answer arrives; a
    new server starts and the participant reloads: the trials come again, and the export marks the ones the
    first page had (1) and not the rest (0)."""
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, practice=False)
    key = get_study(open_db(db_path), "s1").link_key
    query = f"study=s1&key={key}&pid=reloader"

    async def first_page(url: str) -> list[int]:
        async with Tab(url, query) as tab:
            page = await first_trials(tab)
            return [t["id"] for t in page.widget_args["trials"]]

    async def reload_and_answer(url: str) -> list[int]:
        async with Tab(url, query) as tab:
            page = await first_trials(tab)
            again = [t["id"] for t in page.widget_args["trials"]]
            while not page.says("finished"):
                page = await tab.answer([answer_for(page.widget_args["trials"][0])])
            return again

    with participant_server_process(db_path, tmp_path / "server1.log") as (url, proc):
        held = asyncio.run(first_page(url))
        proc.kill()  # SIGKILL: no clean shutdown, nothing flushed by the server
        proc.wait(timeout=30)
    with participant_server_process(db_path, tmp_path / "server2.log") as (url, _):
        again = asyncio.run(reload_and_answer(url))
    assert again == held and len(held) == 3
    export_study(open_db(db_path), tmp_path / "out", "s1", n_boot=10)
    responses = pd.read_csv(tmp_path / "out" / "responses.csv").sort_values("position")
    marked = responses.set_index("position")["earlier_servings"]
    assert marked.tolist() == [1, 1, 1] + [0] * (len(marked) - 3), marked.tolist()
    assert len(marked) == 8  # 6 trials + 2 catch, all answered once
