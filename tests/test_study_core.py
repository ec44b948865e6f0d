"""Study database, design, assignment, resume and participant-side security."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import test_study_support as support

from study import (
    SCHEMA_VERSION,
    AnswerRejected,
    DesignError,
    StudyClosed,
    StudyConfig,
    StudyDBError,
    StudyFull,
    consent,
    create_study,
    get_study,
    join,
    next_trial,
    open_db,
    record_answer,
    set_status,
)
from study.assign import Candidate, choose_items, participant_rng
from study.auth import password_matches
from study.db import integrity_problems
from study.participant import progress
from study.schema import APPLICATION_ID, MIGRATIONS
from study.sets import SetError, build_clean_set, read_set, write_set
from study.validate import InvalidLink, has_participant_link, parse_link

cifar, study_sets, make_study = support.cifar, support.study_sets, support.make_study


def answer_all(db, participant, label_of=lambda trial: 0):
    while (trial := next_trial(db, participant.id)) is not None:
        record_answer(db, participant.id, trial.assignment_id, label_of(trial), rt_ms=400.0, mode="unlimited", input="button")


def item_rows(db, participant_id):
    return db.execute(
        "SELECT i.role, i.condition, i.test_index, i.id FROM assignments a JOIN items i ON i.id = a.item_id "
        "WHERE a.participant_id = ? ORDER BY a.position", [participant_id]).fetchall()


# --- database -------------------------------------------------------------------------------------

def test_new_database_settings(tmp_path):
    db = open_db(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert {"studies", "items", "participants", "assignments", "responses", "admin_log"} <= set(db.table_names())
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        db.execute("INSERT INTO items (study_id, role, condition, attack, source_model, test_index, true_label, png, "
                   "png_sha256, set_dir, set_file) VALUES (999, 'trial', 'c', 'a', '', 1, 1, x'00', '', '', '')")


def test_migrates_version_1_file_keeping_data(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO studies (slug, title, created_at, seed, labels_per_item, trials_per_condition, "
                 "catch_per_participant, abandon_after_min, completion_code, classes_json, design_json) "
                 "VALUES ('old', 'Old', 'now', 0, 1, 1, 0, 60, 'C', '[]', '{\"conditions\": []}')")
    conn.close()
    db = open_db(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "admin_log" in db.table_names()
    assert db.execute("SELECT slug FROM studies").fetchall() == [("old",)]


@pytest.mark.parametrize("content", [b"hello, this is not a database" * 10, b"PK\x03\x04" + bytes(1000)])
def test_non_sqlite_file_is_refused_untouched(tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(StudyDBError, match="not a SQLite database"):
        open_db(path)
    assert path.read_bytes() == content


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StudyDBError, match="another program"):
        open_db(path)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    open_db(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StudyDBError, match="newer than this code"):
        open_db(path)


def test_corrupt_sqlite_file_gives_clear_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)  # right magic, garbage header and pages
    with pytest.raises(StudyDBError, match="not a usable SQLite database"):
        open_db(path)


def test_missing_file_not_created_when_asked(tmp_path):
    with pytest.raises(StudyDBError, match="does not exist"):
        open_db(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_database_enforces_one_answer_per_participant_and_item(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p = consent(db, join(db, study, "alice"))
    trial = next_trial(db, p.id)
    record_answer(db, p.id, trial.assignment_id, 3, rt_ms=10.0, mode="unlimited", input="click")
    item_id = db.execute("SELECT item_id FROM assignments WHERE id = ?", [trial.assignment_id]).fetchone()[0]
    with pytest.raises(sqlite3.IntegrityError):  # even a direct INSERT cannot add a second answer
        db.execute("INSERT INTO responses (assignment_id, participant_id, item_id, label, mode, input, created_at) "
                   "VALUES (?, ?, ?, 4, 'unlimited', 'click', 'now')", [trial.assignment_id, p.id, item_id])
    assert integrity_problems(db) == []


# --- sets ------------------------------------------------------------------------------------------

def test_read_set_round_trip_is_lossless(tmp_path, cifar):
    x, y = cifar
    build_clean_set(tmp_path / "c", [5, 7], x=x, y=y)
    items = read_set(tmp_path / "c")
    from study.sets import decode_png
    assert [i.test_index for i in items] == [5, 7]
    assert np.array_equal(decode_png(items[1].png), x[7])
    assert items[0].condition == "clean" and items[0].true_label == int(y[5]) and items[0].source_pred is None


@pytest.mark.parametrize("problem, message", [
    ("missing-column", "missing columns"), ("traversal", "outside the set folder"), ("not-png", "not a PNG|cannot identify"),
    ("wrong-size", "16x16, expected 32x32"), ("bad-label", "not a class index"), ("duplicate", "appears twice"),
])
def test_read_set_rejects_bad_sets(tmp_path, cifar, problem, message):
    x, y = cifar
    d = tmp_path / "bad"
    rows = [{"index": i, "true_label": int(y[i]), "source": "m", "attack": "PGD16", "source_pred": 1, "linf": 0.1, "l2": 1.0}
            for i in (1, 2)]
    write_set(d, rows, [x[1], x[2]])
    meta = (d / "meta.csv").read_text()
    if problem == "missing-column":
        (d / "meta.csv").write_text(meta.replace("source_pred", "prediction"))
    elif problem == "traversal":
        (d / "meta.csv").write_text(meta.replace("images/000002.png", "../../etc/passwd"))
    elif problem == "not-png":
        (d / "images/000002.png").write_bytes(b"GIF89a not really")
    elif problem == "wrong-size":
        from PIL import Image
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "images/000002.png")
    elif problem == "bad-label":
        (d / "meta.csv").write_text(meta.replace(f"\n2,{int(y[2])},", "\n2,12,"))
    elif problem == "duplicate":
        (d / "meta.csv").write_text(meta.replace("\n2,", "\n1,"))
    with pytest.raises(SetError, match=message):
        read_set(d)


# --- design ----------------------------------------------------------------------------------------

def test_create_study_conditions_and_items(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    assert study.conditions == ["PGD16-vs-0.9-Shallow", "PGD16-vs-Normal ResNet-18", "clean"]
    assert study.trials_per_condition == 2
    per_role = dict(db.execute("SELECT role, count(*) FROM items GROUP BY role").fetchall())
    assert per_role == {"trial": 36, "catch": 12, "practice": 3}
    # the same 12 test images are drawn in every condition (within-image comparison)
    images = [set(r[0] for r in db.execute("SELECT test_index FROM items WHERE condition = ? AND role = 'trial'", [c]))
              for c in study.conditions]
    assert images[0] == images[1] == images[2] and len(images[0]) == 12


@pytest.mark.parametrize("overrides, message", [
    ({"items_per_participant": 7}, "multiple of the 3 conditions"),
    ({"items_per_condition": 30}, "has only 24 items"),
    ({"items_per_participant": 30, "items_per_condition": 8}, "needs 10 items per condition"),
    ({"catch_per_participant": 30, "items_per_condition": 4, "items_per_participant": 12}, "different test images"),
    ({"presentation_ms": 5}, "presentation_ms"),
])
def test_impossible_designs_are_refused(tmp_path, study_sets, overrides, message):
    with pytest.raises(DesignError, match=message):
        make_study(tmp_path / "s.db", study_sets, **overrides)
    assert open_db(tmp_path / "s.db").execute("SELECT count(*) FROM items").fetchone()[0] == 0


def test_bad_names_duplicates_and_practice_overlap(tmp_path, study_sets, cifar):
    with pytest.raises(DesignError, match="study name"):
        make_study(tmp_path / "s.db", study_sets, slug="Bad Name!")
    make_study(tmp_path / "s.db", study_sets)
    with pytest.raises(DesignError, match="already exists"):
        make_study(tmp_path / "s.db", study_sets)
    x, y = cifar
    build_clean_set(tmp_path / "overlap", [100, 301], x=x, y=y)
    db = open_db(tmp_path / "s.db")
    with pytest.raises(DesignError, match="practice images reuse"):
        create_study(db, StudyConfig(slug="s2", items_per_participant=6), study_sets["conditions"],
                     study_sets["catch"], tmp_path / "overlap")


# --- assignment ------------------------------------------------------------------------------------

def test_choose_items_hand_example():
    # two conditions on images 1,2,3; A@1 and B@2 already have their single label
    cands = [Candidate(10, "trial", "A", 1, 1), Candidate(11, "trial", "A", 2, 0), Candidate(12, "trial", "A", 3, 0),
             Candidate(20, "trial", "B", 1, 0), Candidate(21, "trial", "B", 2, 1), Candidate(22, "trial", "B", 3, 0)]
    for seed in range(5):
        chosen = set(choose_items(cands, ["A", "B"], 1, 0, 1, np.random.default_rng(seed)))
        # the only pairs of unlabelled items on different images
        assert chosen in ({11, 22}, {12, 20})


def test_full_study_gets_exactly_k_labels_balanced_and_distinct(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets, labels_per_item=3)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    n_participants = 3 * 12 // 2  # k * items per condition / per participant
    for p in range(n_participants):
        participant = consent(db, join(db, study, f"p{p}"))
        rows = item_rows(db, participant.id)
        roles = [r[0] for r in rows]
        assert roles[:3] == ["practice"] * 3 and roles.count("catch") == 2
        trials = [r for r in rows if r[0] == "trial"]
        assert Counter(r[1] for r in trials) == {c: 2 for c in study.conditions}
        origins = [r[2] for r in rows]
        assert len(set(origins)) == len(origins)  # never the same image twice
        answer_all(db, participant)
    labels = Counter(r[0] for r in db.execute(
        "SELECT r.item_id FROM responses r JOIN items i ON i.id = r.item_id WHERE i.role = 'trial'"))
    trial_items = [r[0] for r in db.execute("SELECT id FROM items WHERE role = 'trial'")]
    assert sorted(labels[i] for i in trial_items) == [3] * 36
    with pytest.raises(StudyFull):
        consent(db, join(db, study, "one-too-many"))


def test_order_reproducible_from_seed_and_participant(tmp_path, study_sets):
    orders = []
    for run in range(2):
        make_study(tmp_path / f"r{run}.db", study_sets)
        db = open_db(tmp_path / f"r{run}.db")
        study = get_study(db, "s1")
        orders.append([[r[3] for r in item_rows(db, consent(db, join(db, study, pid)).id)] for pid in ("ann", "bob")])
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[0][1]
    rng_a, rng_b = participant_rng(0, "ann"), participant_rng(0, "ann")
    assert rng_a.random() == rng_b.random() and participant_rng(1, "ann").random() != participant_rng(0, "ann").random()


def test_nothing_is_reserved_and_surplus_answers_do_not_count(tmp_path, study_sets):
    """Old code: a consent reserved the whole list, so a second participant was refused (StudyFull) while the first
    sat on all 6 items. Now both get in; the first k answers of included participants count, later ones are
    surplus; excluding someone moves the next answers up."""
    from study.admin import set_excluded
    from study.allocation import places_needed, surplus_response_ids
    make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=6, conditions=["clean"])
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    first = consent(db, join(db, study, "first"))
    second = consent(db, join(db, study, "second"))  # admitted although the first holds every image
    assert {r[3] for r in item_rows(db, second.id) if r[0] == "trial"} == {r[3] for r in item_rows(db, first.id) if r[0] == "trial"}
    answer_all(db, first)
    assert places_needed(db, study) == 0
    with pytest.raises(StudyFull):
        consent(db, join(db, study, "third"))
    answer_all(db, second)  # a participant admitted earlier finishes; their answers are kept, as surplus
    trial_answers = db.execute("SELECT r.id, r.participant_id FROM responses r JOIN items i ON i.id = r.item_id "
                               "WHERE i.role = 'trial'").fetchall()
    assert surplus_response_ids(db, study) == {rid for rid, pid in trial_answers if pid == second.id}
    set_excluded(db, "s1", db.execute("SELECT uid FROM participants WHERE id = ?", [first.id]).fetchone()[0], True, "test")
    assert surplus_response_ids(db, study) == set()  # the second participant's answers count now


# --- participant flow, resume, security -------------------------------------------------------------

def test_resume_after_reconnect(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p = consent(db, join(db, study, "carol"))
    for _ in range(5):
        t = next_trial(db, p.id)
        record_answer(db, p.id, t.assignment_id, 1, rt_ms=5.0, mode="unlimited", input="click")
    db.close()
    db = open_db(tmp_path / "s.db")  # a reload: new connection, same participant id from the link
    again = join(db, get_study(db, "s1"), "carol")
    assert again.id == p.id and again.consent_at == p.consent_at
    t = next_trial(db, again.id)
    assert t.number == 6 and progress(db, again.id) == (5, 11, 3)
    assert consent(db, again).consent_at == p.consent_at  # consent again changes nothing
    assert len(item_rows(db, p.id)) == 11


def test_practice_feedback_and_completion(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    p = consent(db, join(db, get_study(db, "s1"), "dave"))
    t = next_trial(db, p.id)
    assert t.is_practice and t.practice_label is not None and t.practice_total == 3
    r = record_answer(db, p.id, t.assignment_id, (t.practice_label + 1) % 10, rt_ms=1.0, mode="unlimited", input="click")
    assert r.stored and r.practice_label == t.practice_label and not r.completed
    for _ in range(2):
        t = next_trial(db, p.id)
        assert t.is_practice
        record_answer(db, p.id, t.assignment_id, 0, rt_ms=1.0, mode="unlimited", input="click")
    t = next_trial(db, p.id)
    assert not t.is_practice and t.practice_label is None  # study items never reveal their label
    answer_all(db, p)
    assert db.execute("SELECT completed_at IS NOT NULL FROM participants WHERE id = ?", [p.id]).fetchone()[0] == 1


def test_duplicate_out_of_order_foreign_and_invalid_answers(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    alice, bob = (consent(db, join(db, study, pid)) for pid in ("alice", "bob"))
    t = next_trial(db, alice.id)
    first = record_answer(db, alice.id, t.assignment_id, 2, rt_ms=300.0, mode="unlimited", input="click")
    again = record_answer(db, alice.id, t.assignment_id, 7, rt_ms=1.0, mode="unlimited", input="keyboard")
    assert first.stored and not again.stored and again.label == 2
    assert db.execute("SELECT count(*), min(label) FROM responses").fetchone() == (1, 2)
    bobs = next_trial(db, bob.id)
    with pytest.raises(AnswerRejected, match="not assigned"):  # alice cannot answer bob's item
        record_answer(db, alice.id, bobs.assignment_id, 1, rt_ms=1.0, mode="unlimited", input="click")
    later = db.execute("SELECT id FROM assignments WHERE participant_id = ? ORDER BY position DESC LIMIT 1", [alice.id]).fetchone()[0]
    with pytest.raises(AnswerRejected, match="in order"):
        record_answer(db, alice.id, later, 1, rt_ms=1.0, mode="unlimited", input="click")
    current = next_trial(db, alice.id).assignment_id
    for bad in ({"label": 10}, {"label": -1}, {"label": "3"}, {"label": True}, {"rt_ms": -5.0}, {"rt_ms": "fast"},
                {"mode": "sneaky"}, {"input": "script"}):
        kwargs = {"label": 1, "rt_ms": 1.0, "mode": "unlimited", "input": "click", **bad}
        label = kwargs.pop("label")
        with pytest.raises(AnswerRejected):
            record_answer(db, alice.id, current, label, **kwargs)
    assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 1
    # next_trial shows nothing but the participant's own next item
    assert next_trial(db, bob.id).assignment_id == bobs.assignment_id
    assert db.execute("SELECT participant_id FROM assignments WHERE id = ?", [current]).fetchone()[0] == alice.id


def test_closed_study_takes_no_answers_or_participants(tmp_path, study_sets):
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p = consent(db, join(db, study, "erin"))
    set_status(db, "s1", "closed")
    t = next_trial(db, p.id)
    with pytest.raises(StudyClosed):
        record_answer(db, p.id, t.assignment_id, 1, rt_ms=1.0, mode="unlimited", input="click")
    with pytest.raises(StudyClosed):
        join(db, study, "frank")
    set_status(db, "s1", "open")
    assert record_answer(db, p.id, t.assignment_id, 1, rt_ms=1.0, mode="unlimited", input="click").stored


@pytest.mark.parametrize("params, expected", [
    ({"pid": "abc-123_X"}, ("abc-123_X", None)),
    ({"PROLIFIC_PID": "5f1c2d3e4b5a697887766554", "STUDY_ID": "s9", "SESSION_ID": "x1", "study": "demo-1"},
     ("5f1c2d3e4b5a697887766554", "demo-1")),
    ({"pid": ["same"], "PROLIFIC_PID": ["same"], "utm_source": "<script>"}, ("same", None)),
])
def test_link_parameters_accepted(params, expected):
    link = parse_link(params)
    assert (link.external_id, link.study) == expected
    assert has_participant_link(params)


@pytest.mark.parametrize("params", [
    {}, {"pid": ""}, {"pid": "a" * 65}, {"pid": "a b"}, {"pid": "x'; DROP TABLE responses;--"}, {"pid": "é"},
    {"pid": "ok", "study": "Upper"}, {"pid": "ok", "study": "../x"}, {"pid": "ok", "SESSION_ID": "<b>"},
    {"pid": "a", "PROLIFIC_PID": "b"}, {"pid": ["a", "b"]},
    # a trailing newline (`%0A`) is not part of an id: every parameter must match as a whole
    {"pid": "abc\n"}, {"PROLIFIC_PID": "5f1c\n"}, {"pid": "ok", "STUDY_ID": "s9\n"}, {"pid": "ok", "SESSION_ID": "x\n"},
    {"pid": "ok", "study": "demo\n"}, {"pid": "ok", "key": "k" * 22 + "\n"}, {"pid": "ok", "key": "short"},
    # a parameter given twice is refused, whichever one
    {"pid": "ok", "study": ["a", "b"]}, {"pid": "ok", "key": ["k" * 22, "k" * 22]}, {"PROLIFIC_PID": ["a", "a"]},
])
def test_link_parameters_rejected(params):
    with pytest.raises(InvalidLink):
        parse_link(params)


def test_password_comparison():
    assert password_matches("correct horse", "correct horse")
    assert not password_matches("correct hors", "correct horse")
    assert not password_matches("", "correct horse")


@pytest.mark.parametrize("overrides, message", [
    ({"slug": "demo\n"}, "study name"), ({"completion_code": "CODE\n"}, "completion code"),
    ({"redirect_url": "https://app.prolific.com/x\n"}, "redirect URL"),
    ({"redirect_url": "https://a.b/c\nhttps://evil"}, "redirect URL"), ({"abandon_after_min": 0}, "abandon_after_min"),
])
def test_study_options_must_match_whole(tmp_path, study_sets, overrides, message):
    settings = {"slug": "s1", **overrides}
    db = open_db(tmp_path / "s.db")
    with pytest.raises(DesignError, match=message):
        create_study(db, StudyConfig(**settings), study_sets["conditions"], study_sets["catch"])
    assert db.execute("SELECT count(*) FROM studies").fetchone()[0] == 0


def test_link_keys_are_random_and_checked(tmp_path, study_sets):
    from study import key_matches, participant_link
    make_study(tmp_path / "s.db", study_sets)
    make_study(tmp_path / "s.db", study_sets, slug="s2")
    db = open_db(tmp_path / "s.db")
    k1, k2 = get_study(db, "s1").link_key, get_study(db, "s2").link_key
    assert k1 != k2 and len(k1) >= 22
    assert key_matches(k1, k1) and not key_matches(k2, k1) and not key_matches(None, k1) and not key_matches("", k1)
    link = participant_link("https://study.example.org/", "s1", k1)
    assert link == (f"https://study.example.org/?study=s1&key={k1}&PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}"
                    "&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")
    for bad in ("ftp://x", "https://x/?a=1", "https://x\n", "https://x y"):
        with pytest.raises(ValueError):
            participant_link(bad, "s1", k1)


def test_version_2_file_gets_link_keys_and_activity(tmp_path, study_sets):
    """A database made before keyed links migrates: every study gets its own key, and consented participants
    get an activity time from their last answer."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    for slug in ("a", "b"):
        conn.execute("INSERT INTO studies (slug, title, created_at, seed, labels_per_item, trials_per_condition, "
                     "catch_per_participant, abandon_after_min, completion_code, classes_json, design_json) "
                     f"VALUES ('{slug}', 'Old', 'now', 0, 1, 1, 0, 60, 'C', ?, '{{\"conditions\": [\"clean\"]}}')",
                     [json.dumps([str(i) for i in range(10)])])  # fields as sound as get_study requires
    conn.execute("INSERT INTO participants (study_id, uid, external_id, joined_at, consent_at, last_seen_at) "
                 "VALUES (1, 'P1', 'x', '2026-01-01T00:00:00', '2026-01-01T00:00:01', '2026-01-01T00:05:00')")
    conn.close()
    db = open_db(path)
    keys = [r[0] for r in db.execute("SELECT link_key FROM studies ORDER BY id")]
    assert all(keys) and keys[0] != keys[1]
    assert db.execute("SELECT active_at, timed_out_at FROM participants").fetchone() == ("2026-01-01T00:00:01", None)
    assert get_study(db, "a").link_key == keys[0]


def test_refused_enrolment_stores_nothing(tmp_path, study_sets):
    from study import enrol
    make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=6, conditions=["clean"])
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    answer_all(db, enrol(db, study, "first"))  # gives all 6 labels (k = 1)
    with pytest.raises(StudyFull):
        enrol(db, study, "second", external_study_id="s", external_session_id="x")
    assert [r[0] for r in db.execute("SELECT external_id FROM participants")] == ["first"]
    set_status(db, "s1", "closed")
    with pytest.raises(StudyClosed):
        enrol(db, study, "third")
    assert db.execute("SELECT count(*) FROM participants").fetchone()[0] == 1


def test_bots_that_never_answer_do_not_keep_a_participant_out(tmp_path, study_sets):
    """Old code: 12 consent-only bots filled the study and everyone else was told 'places taken' until the
    inactivity window passed. Now 200 bots with fresh ids, consenting again and again, hold nothing: a real
    participant is admitted at once, and every one of their answers counts."""
    from study import enrol
    from study.allocation import places_needed, surplus_response_ids
    make_study(tmp_path / "s.db", study_sets, labels_per_item=2, items_per_condition=12, items_per_participant=6)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    assert places_needed(db, study) == 12  # 3 conditions x 12 items x k=2 / 6 per participant
    for wave in range(2):
        for i in range(100):
            enrol(db, study, f"bot{wave}-{i:03d}")  # never refused, never answers
        real = enrol(db, study, f"real{wave}")
        rows = item_rows(db, real.id)
        assert len(rows) == 3 + 6 + 2 and Counter(r[1] for r in rows if r[0] == "trial") == {c: 2 for c in study.conditions}
        answer_all(db, real)
        assert db.execute("SELECT completed_at IS NOT NULL FROM participants WHERE id = ?", [real.id]).fetchone()[0]
    assert surplus_response_ids(db, study) == set() and places_needed(db, study) == 10
    # a bot that does answer gives real labels, counted only while an item needs them, and excludable
    bot = consent(db, join(db, study, "bot0-000"))  # already enrolled: the same row
    answer_all(db, bot)
    surplus = surplus_response_ids(db, study)
    counted = Counter(item for rid, item in db.execute(
        "SELECT r.id, r.item_id FROM responses r JOIN items i ON i.id = r.item_id WHERE i.role = 'trial'")
        if rid not in surplus)
    assert max(counted.values()) <= 2 and places_needed(db, study) == 9  # never more than k counted labels


def test_lapsed_participant_simply_continues(tmp_path, study_sets):
    """Old code timed out a participant whose images had been taken while they were away; nothing is taken away
    now, so they go on (their later answers may be surplus)."""
    make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    from study import enrol
    p = enrol(db, study, "slow")
    past = (datetime.now(UTC) - timedelta(minutes=study.abandon_after_min + 1)).isoformat()
    db.execute("UPDATE participants SET active_at = ?", [past])
    for other in range(12):
        answer_all(db, enrol(db, study, f"quick{other}"))
    trial = next_trial(db, p.id)
    assert record_answer(db, p.id, trial.assignment_id, 1, rt_ms=1.0, mode="unlimited", input="click").stored
    answer_all(db, p)
    assert db.execute("SELECT completed_at IS NOT NULL, timed_out_at FROM participants WHERE id = ?",
                      [p.id]).fetchone() == (1, None)


def test_lockout_is_kept_in_the_database(tmp_path, study_sets):
    from study.auth import MAX_FAILURES, check_password, locked_for
    make_study(tmp_path / "s.db", study_sets)
    secret = "a long organiser secret"
    for i in range(MAX_FAILURES):
        attempt = check_password(open_db(tmp_path / "s.db"), "guess", secret)  # a new connection each time
        assert not attempt.ok and (attempt.locked_for_s > 0) == (i == MAX_FAILURES - 1)
    db = open_db(tmp_path / "s.db")
    first = locked_for(db)
    assert 55 < first <= 60
    assert not check_password(db, secret, secret).ok  # while locked, even the right password fails
    db.execute("UPDATE auth_failures SET locked_until = 0")  # the minute passes
    for _ in range(MAX_FAILURES):
        check_password(db, "guess", secret)
    assert 115 < locked_for(db) <= 120  # backoff: the second lockout is twice as long
    db.execute("UPDATE auth_failures SET locked_until = 0")
    assert check_password(db, secret, secret).ok and locked_for(db) == 0
    assert db.execute("SELECT count(*) FROM auth_failures").fetchone()[0] == 0
    assert secret not in (tmp_path / "s.db").read_bytes().decode("latin-1")


def test_lockout_is_per_client_address_and_session(tmp_path, study_sets):
    from study.auth import MAX_FAILURES, ProcessLockout, check_password, client_keys, locked_for
    make_study(tmp_path / "s.db", study_sets)
    secret = "a long organiser secret"
    stranger, organiser = client_keys("203.0.113.7", "s1"), client_keys("198.51.100.2", "s2")
    for _ in range(MAX_FAILURES):
        check_password(open_db(tmp_path / "s.db"), "guess", secret, keys=stranger)
    db = open_db(tmp_path / "s.db")  # persistent: a new connection (or server) sees it
    assert 55 < locked_for(db, keys=stranger) <= 60
    assert locked_for(db, keys=client_keys("203.0.113.7", "another-tab")) > 55  # a new session: same address
    assert locked_for(db, keys=organiser) == 0 and check_password(db, secret, secret, keys=organiser).ok
    assert locked_for(db, keys=stranger) > 0  # the organiser's success clears only their own keys
    gate = ProcessLockout()
    for _ in range(MAX_FAILURES):
        gate.check("guess", secret, stranger)
    assert gate.locked_for(stranger) > 55 and gate.locked_for(organiser) == 0 and gate.check(secret, secret, organiser).ok


def test_passwords_need_real_length(monkeypatch):
    from study.auth import AdminNotConfigured, app_password, configured_password, is_loopback
    for bad in (" " * 8, " " * 20, "short", "  eleven-chr  "):
        monkeypatch.setenv("STUDY_ADMIN_PASSWORD", bad)
        with pytest.raises(AdminNotConfigured, match="at least 12"):
            configured_password()
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", "a long organiser secret")
    assert configured_password() == app_password() == "a long organiser secret"
    monkeypatch.setenv("RANDMASK_APP_PASSWORD", "another lab password")
    assert app_password() == "another lab password"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not any(is_loopback(a) for a in (None, "", "0.0.0.0", "192.168.1.5", "::"))


def test_backup_of_a_live_database(tmp_path, study_sets):
    from study.db import backup
    from study.simulate import simulate_participant
    make_study(tmp_path / "s.db", study_sets)
    simulate_participant(tmp_path / "s.db", "s1", "before")
    writer = open_db(tmp_path / "s.db")
    writer.execute("BEGIN")  # a reader holding a snapshot does not block the backup
    writer.execute("SELECT count(*) FROM responses").fetchone()
    size = backup(tmp_path / "s.db", tmp_path / "copy.db")
    writer.execute("COMMIT")
    assert size > 0
    copy = open_db(tmp_path / "copy.db", create=False)
    assert integrity_problems(copy) == []
    assert copy.execute("SELECT count(*) FROM responses").fetchone()[0] == 11
    with pytest.raises(StudyDBError, match="already exists"):
        backup(tmp_path / "s.db", tmp_path / "copy.db")


@pytest.mark.parametrize("params,rule", [
    ({"study": "demo", "key": "tooshort", "pid": "p1"}, "16 to 64 characters"),
    ({"study": "Demo", "key": "k" * 20, "pid": "p1"}, "lower-case letters"),
    ({"study": "demo", "key": "k" * 20, "pid": "p" * 65}, "1 to 64 characters"),
])
def test_an_invalid_link_part_names_its_own_rule(params, rule):
    with pytest.raises(InvalidLink, match=rule):
        parse_link(params)


def test_idle_participants_answered_items_are_not_handed_out_again(tmp_path, study_sets):
    """The issue's case (k = 1): two finish, a third answers 2 items and goes idle past the window, a fourth
    consents. Old code: only one image still needed a label, so the fourth's list was filled with the third's
    answered images, which ended with 2 labels each. Now those answers of the fourth are surplus; the third comes back and finishes; no item has more than k
    counted labels and every item has its k."""
    from study import enrol
    from study.allocation import surplus_response_ids
    make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=3, items_per_participant=3,
               catch_per_participant=0, practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    for pid in ("one", "two"):
        answer_all(db, enrol(db, study, pid))
    third = enrol(db, study, "third")
    answered = []
    while len(answered) < 2:
        trial = next_trial(db, third.id)
        record_answer(db, third.id, trial.assignment_id, 4, rt_ms=1.0, mode="unlimited", input="click")
        answered.append(db.execute("SELECT item_id FROM assignments WHERE id = ?", [trial.assignment_id]).fetchone()[0])
    past = (datetime.now(UTC) - timedelta(minutes=study.abandon_after_min + 1)).isoformat()
    db.execute("UPDATE participants SET active_at = ? WHERE id = ?", [past, third.id])
    fourth = enrol(db, study, "fourth")
    answer_all(db, fourth)
    while (trial := next_trial(db, third.id)) is not None:  # back after the break: goes on, nothing lost
        assert record_answer(db, third.id, trial.assignment_id, 4, rt_ms=1.0, mode="unlimited", input="click").stored
    surplus = surplus_response_ids(db, study)
    counted = Counter(item for rid, item in db.execute(
        "SELECT r.id, r.item_id FROM responses r JOIN items i ON i.id = r.item_id WHERE i.role = 'trial'") if rid not in surplus)
    assert max(counted.values()) == 1 and len(counted) == 9
