"""AppTest for the participant and organiser pages, and the `python -m study` CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import test_study_support as support
from streamlit.testing.v1 import AppTest

from study import get_study, next_trial, open_db
from study.cli import main as cli
from study.participant import get_participant

cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
LABEL_PAGE = str(ROOT / "pages" / "study_label.py")
ADMIN_PAGE = str(ROOT / "pages" / "study_admin.py")
PASSWORD = "test-organiser-pw"


@pytest.fixture()
def db_path(tmp_path, study_sets, monkeypatch):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, completion_code="DONE123")
    monkeypatch.setenv("STUDY_DB", str(path))
    return path


def link_key(db_path: Path, slug: str = "s1") -> str:
    db = open_db(db_path)
    try:
        return get_study(db, slug).link_key
    finally:
        db.close()


def label_page(**params) -> AppTest:
    """The labeling page with these query parameters; `key` defaults to the right link key of $STUDY_DB's study."""
    import os
    path = Path(os.environ.get("STUDY_DB", "missing.db"))
    if "key" not in params and isinstance(params.get("study"), str) and path.exists():
        db = open_db(path)
        row = db.execute("SELECT link_key FROM studies WHERE slug = ?", [params["study"]]).fetchone()
        db.close()
        if row:
            params["key"] = row[0]
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
    for key, value in params.items():
        if value is not None:
            at.query_params[key] = value
    return at.run()


def simple(at: AppTest) -> AppTest:
    """Switch to the plain-button version (AppTest cannot click inside the custom trial widget)."""
    return at.button(key="simple-mode").click().run()


def n_participants(db_path: Path) -> int:
    db = open_db(db_path)
    try:
        return db.execute("SELECT count(*) FROM participants").fetchone()[0]
    finally:
        db.close()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "info", "success", "warning") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def current(db_path: Path, pid: str):
    db = open_db(db_path)
    participant = get_participant(db, get_study(db, "s1"), pid)
    trial = next_trial(db, participant.id) if participant else None
    db.close()
    return trial


def test_participant_flow_practice_resume_completion(db_path):
    at = label_page(pid="alice", study="s1")
    assert not at.exception
    assert "research study" in texts(at)
    at.button(key="consent").click().run()
    assert "Instructions" in texts(at) or any("Instructions" in s.value for s in at.subheader)
    at.button(key="start").click().run()
    at = simple(at)
    clicks = {}
    # practice: one wrong answer, then right ones, each followed by feedback
    for n in range(3):
        trial = current(db_path, "alice")
        assert trial.is_practice and f"Practice {n + 1} of 3" in texts(at)
        label = (trial.practice_label + 1) % 10 if n == 0 else trial.practice_label
        at.button(key=f"fallback-{trial.assignment_id}-{label}").click().run()
        clicks[trial.assignment_id] = label
        shown = texts(at)
        assert ("Not quite" in shown) if n == 0 else ("Correct" in shown)
        assert ("last practice image" in shown) == (n == 2)
        at.button(key=f"continue-{trial.assignment_id}").click().run()
    for n in range(4):
        trial = current(db_path, "alice")
        assert not trial.is_practice and f"Image {n + 1} of 8" in texts(at)
        at.button(key=f"fallback-{trial.assignment_id}-{n}").click().run()
        clicks[trial.assignment_id] = n
    # reload: a brand-new session with the same link resumes at the fifth image, no consent asked
    at = simple(label_page(pid="alice", study="s1"))
    assert "Image 5 of 8" in texts(at)
    assert "consent" not in [b.key for b in at.button]
    for n in range(4):
        trial = current(db_path, "alice")
        at.button(key=f"fallback-{trial.assignment_id}-{9 - n}").click().run()
        clicks[trial.assignment_id] = 9 - n
    assert "DONE123" in [c.value for c in at.code]
    assert "finished" in texts(at)
    db = open_db(db_path)
    stored = dict(db.execute("SELECT assignment_id, label FROM responses").fetchall())
    assert stored == clicks
    assert {r[0] for r in db.execute("SELECT input FROM responses")} == {"button"}
    assert db.execute("SELECT count(*) FROM participants WHERE completed_at IS NOT NULL").fetchone()[0] == 1
    # after completion the link only shows the code again
    again = label_page(pid="alice", study="s1")
    assert "DONE123" in [c.value for c in again.code] and not [b for b in again.button if b.key.startswith("fallback")]


def test_double_click_is_stored_once(db_path):
    at = label_page(pid="bob", study="s1")
    at.button(key="consent").click().run()
    simple(at.button(key="start").click().run())
    trial = current(db_path, "bob")
    stale = label_page(pid="bob", study="s1")  # a second tab on the same item
    simple(stale.button(key="start").click().run())
    at.button(key=f"fallback-{trial.assignment_id}-{trial.practice_label}").click().run()
    stale.button(key=f"fallback-{trial.assignment_id}-1").click().run()  # answered already: ignored
    db = open_db(db_path)
    assert db.execute("SELECT count(*), min(label) FROM responses").fetchone() == (1, trial.practice_label)
    assert not stale.exception


@pytest.mark.parametrize("params, message", [
    ({}, "no participant id"), ({"pid": "bad id!"}, "not a valid participant id"),
    ({"pid": "x" * 80}, "not a valid participant id"), ({"pid": "ok", "study": "nope"}, "not valid"),
    ({"pid": "ok", "study": "../../etc"}, "not a valid study name"),
    ({"pid": "abc\n", "study": "s1"}, "not a valid participant id"),  # ?pid=abc%0A
    ({"PROLIFIC_PID": "abc", "STUDY_ID": "x\n", "study": "s1"}, "not a valid study id"),
    ({"pid": ["a", "b"], "study": "s1"}, "given 2 times"), ({"pid": "a", "study": ["s1", "s1"]}, "given 2 times"),
    ({"pid": "ok", "study": "s1", "key": None}, "key is missing or wrong"),  # no key at all
    ({"pid": "ok", "study": "s1", "key": "A" * 22}, "key is missing or wrong"),
])
def test_bad_links_are_refused(db_path, params, message):
    at = label_page(**params)
    shown = texts(at)
    assert message in shown and "error id E-" in shown and not at.exception
    assert not [b for b in at.button if b.key == "consent"]  # no way forward
    assert n_participants(db_path) == 0  # nothing stored


def test_wrong_key_of_another_study_is_refused(db_path, study_sets):
    support.make_study(db_path, study_sets, slug="other")
    at = label_page(pid="ok", study="s1", key=link_key(db_path, "other"))
    assert "key is missing or wrong" in texts(at) and n_participants(db_path) == 0


def test_visit_stores_nothing_until_consent(db_path):
    at = label_page(pid="looker", study="s1")
    assert "research study" in texts(at) and n_participants(db_path) == 0
    label_page(pid="looker", study="s1")  # a reload: still nothing
    assert n_participants(db_path) == 0
    at.button(key="consent").click().run()
    assert n_participants(db_path) == 1


def test_damaged_database_shows_no_traceback(db_path):
    at = label_page(pid="dora", study="s1")
    raw = bytearray(db_path.read_bytes())
    raw[4096:len(raw)] = b"\x13" * (len(raw) - 4096)  # every page after the first is garbage, header intact
    db_path.write_bytes(bytes(raw))
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    at.button(key="consent").click().run()
    shown = texts(at)
    assert not at.exception and "error id E-" in shown
    assert "Traceback" not in shown and "DatabaseError" not in shown and str(db_path) not in shown
    again = label_page(pid="dora", study="s1", key="k" * 22)  # a fresh visit on the damaged file
    assert not again.exception and "error id E-" in texts(again) and "Traceback" not in texts(again)


def test_prolific_parameters_are_recorded(db_path):
    at = label_page(PROLIFIC_PID="5f1c2d3e4b5a697887766554", STUDY_ID="abc123", SESSION_ID="sess9", study="s1")
    assert not at.exception
    at.button(key="consent").click().run()
    db = open_db(db_path)
    assert db.execute("SELECT external_id, external_study_id, external_session_id FROM participants").fetchall() == [
        ("5f1c2d3e4b5a697887766554", "abc123", "sess9")]


def test_closed_and_missing_database(db_path, monkeypatch, tmp_path):
    assert cli(["close", "--db", str(db_path), "--study", "s1"]) == 0
    assert "closed" in texts(label_page(pid="newcomer", study="s1"))
    monkeypatch.setenv("STUDY_DB", str(tmp_path / "missing.db"))
    assert "not available" in texts(label_page(pid="newcomer", study="s1", key="k" * 22))
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not sqlite at all" * 50)
    monkeypatch.setenv("STUDY_DB", str(bad))
    assert "not available" in texts(label_page(pid="newcomer", study="s1", key="k" * 22))
    assert bad.read_bytes() == b"not sqlite at all" * 50


def test_timed_study_explains_presentation(tmp_path, study_sets, monkeypatch):
    path = tmp_path / "t.db"
    support.make_study(path, study_sets, slug="timed", presentation_ms=70)
    monkeypatch.setenv("STUDY_DB", str(path))
    at = label_page(pid="tim", study="timed")
    at.button(key="consent").click().run()
    assert "70 ms" in texts(at)


# --- organiser page -----------------------------------------------------------------------------------

def admin_page() -> AppTest:
    return AppTest.from_file(ADMIN_PAGE, default_timeout=30).run()


def sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key="admin_password").input(password)
    return at.button[0].click().run()


def test_admin_needs_configured_password(db_path, monkeypatch):
    monkeypatch.delenv("STUDY_ADMIN_PASSWORD", raising=False)
    at = admin_page()
    assert "Organiser page disabled" in texts(at) and not at.tabs
    for weak in ("short", " " * 12):
        monkeypatch.setenv("STUDY_ADMIN_PASSWORD", weak)
        assert "at least 12" in texts(admin_page())


def test_admin_wrong_password_and_lockout(db_path, monkeypatch):
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    at = admin_page()
    for _ in range(5):
        at = sign_in(at, "guess")
        assert "Wrong password" in texts(at) and not at.tabs
    at.run()
    assert "Too many wrong passwords" in texts(at)
    assert not at.text_input  # no form while locked, even for the right password
    fresh = admin_page()  # a reload or another browser: a new session, and still locked
    assert "Too many wrong passwords" in texts(fresh) and not fresh.text_input and not fresh.tabs


def test_admin_guesses_from_one_address_never_lock_out_another(db_path, monkeypatch):
    """Old code: five wrong passwords from anyone locked the organiser page for everyone."""
    import study.guard
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    import study.auth
    by_address = study.auth.client_keys  # AppTest gives every test session the same id: count by address only
    monkeypatch.setattr(study.auth, "client_keys", lambda address, session_id=None: by_address(address))
    monkeypatch.setattr(study.guard, "client_address", lambda remote, headers: "203.0.113.7")
    at = admin_page()
    for _ in range(5):
        at = sign_in(at, "guess")
    assert "Too many wrong passwords" in texts(admin_page())  # the stranger's address stays locked
    monkeypatch.setattr(study.guard, "client_address", lambda remote, headers: "198.51.100.2")
    organiser = admin_page()
    assert "Too many wrong passwords" not in texts(organiser) and organiser.text_input(key="admin_password")
    assert sign_in(organiser, PASSWORD).tabs


def test_admin_progress_close_exclude_export(db_path, monkeypatch):
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    from study.simulate import simulate_participant
    for pid in ("a1", "a2"):
        simulate_participant(db_path, "s1", pid)
    at = sign_in(admin_page(), PASSWORD)
    assert not at.exception and len(at.tabs) == 5
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Participants"] == "2" and metrics["Completed"] == "2"
    at.slider(key="catch-threshold").set_value(1.0).run()
    assert "below 100% on catch trials" in texts(at)
    db = open_db(db_path)
    uid = db.execute("SELECT uid FROM participants ORDER BY id").fetchone()[0]
    at.selectbox(key="one-participant").set_value(uid).run()
    at.text_input(key="exclusion-reason").input("test reason").run()
    at.button(key="exclude-one").click().run()
    assert db.execute("SELECT excluded, exclusion_reason FROM participants WHERE uid = ?", [uid]).fetchone() == (1, "test reason")
    at.button(key="prepare-export").click().run()
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download all (zip)" in labels and "Download summary.csv" in labels
    at.button(key="close-study").click().run()
    assert db.execute("SELECT status FROM studies").fetchone()[0] == "closed"
    assert db.execute("SELECT action FROM admin_log ORDER BY id DESC LIMIT 1").fetchone()[0] == "closed"


def test_admin_creates_study(tmp_path, study_sets, monkeypatch):
    monkeypatch.setenv("STUDY_DB", str(tmp_path / "new.db"))
    monkeypatch.setenv("STUDY_ADMIN_PASSWORD", PASSWORD)
    at = sign_in(admin_page(), PASSWORD)
    at.text_input(key="new-slug").input("fresh")
    at.text_area(key="new-sets").input("\n".join(str(p) for p in study_sets["conditions"]))
    at.text_input(key="new-catch").input(str(study_sets["catch"]))
    at.number_input(key="new-n").set_value(7)
    next(b for b in at.button if "Create" in b.label).click().run()
    assert "multiple of the 3 conditions" in texts(at)
    at.number_input(key="new-n").set_value(6)
    next(b for b in at.button if "Create" in b.label).click().run()
    assert "Created study fresh" in texts(at)
    assert get_study(open_db(tmp_path / "new.db"), "fresh").trials_per_condition == 2


# --- CLI -------------------------------------------------------------------------------------------------

def test_cli_create_list_export(tmp_path, study_sets, capsys, data_dir):
    db = str(tmp_path / "c.db")
    args = ["create", "--db", db, "--name", "cli", "--items-per-participant", "6", "--labels-per-item", "1",
            "--catch-set", str(study_sets["catch"]), "--practice-set", str(study_sets["practice"])]
    for folder in study_sets["conditions"]:
        args += ["--set", str(folder)]
    assert cli(args) == 0
    assert "created study 'cli'" in capsys.readouterr().out
    from study.simulate import simulate_participant
    simulate_participant(db, "cli", "x1")
    assert cli(["list", "--db", db]) == 0
    assert "labels 6/72" in capsys.readouterr().out
    assert cli(["export", "--db", db, "--out", str(tmp_path / "out"), "--bootstrap", "100",
                "--cifar10h", str(data_dir / "cifar10h" / "counts.npy")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["README.md", "cifar10h.csv", "datapackage.json", "items.csv", "participants.csv",
                       "responses.csv", "summary.csv"]
    assert len(pd.read_csv(tmp_path / "out" / "responses.csv")) == 11
    assert cli(["check", "--db", db]) == 0


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"definitely not sqlite" * 20)
    result = subprocess.run([sys.executable, "-m", "study", "export", "--db", str(bad), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a SQLite database" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "study", "create", "--db", str(tmp_path / "n.db"), "--name", "x",
                             "--set", str(tmp_path / "no-such-set")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "no meta.csv" in result.stderr and "Traceback" not in result.stderr
    for args, message in [(["--count", "0"], "error: --count must be at least 1, got 0"),
                          (["--count", "-3"], "error: --count must be at least 1, got -3"),
                          (["--unambiguous", "1.5"], "error: --unambiguous is a share of CIFAR-10H annotators, "
                                                     "from 0 to 1, got 1.5"),
                          (["--unambiguous", "nan"], "error: --unambiguous is a share of CIFAR-10H annotators, "
                                                     "from 0 to 1, got nan")]:
        result = subprocess.run([sys.executable, "-m", "study", "clean-set", "--out", str(tmp_path / "cs"), *args],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 2 and result.stderr.strip() == message and not (tmp_path / "cs").exists()


def test_label_page_inside_app_navigation(db_path):
    """Through app.py, as participants reach it: st.navigation runs the page as an unregistered
    module, which the trial widget's declaration must survive."""
    app = ROOT / "app.py"
    if not app.exists():
        pytest.skip("app.py not present")
    at = AppTest.from_file(str(app), default_timeout=60)
    at.query_params["pid"] = "via-app"
    at.query_params["study"] = "s1"
    at.query_params["key"] = link_key(db_path)
    at.run()
    assert not at.exception
    at.button(key="consent").click().run()
    at.button(key="start").click().run()
    at = simple(at)
    trial = current(db_path, "via-app")
    at.button(key=f"fallback-{trial.assignment_id}-{trial.practice_label}").click().run()
    assert not at.exception and "Correct" in texts(at)
