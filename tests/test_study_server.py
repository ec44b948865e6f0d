"""The participant server's command line and settings, the link/list/backup commands, the widget protocol,
and the researcher app's password gate when it listens beyond loopback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import test_study_support as support
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from study import enrol, get_study, open_db
from study.cli import main as cli
from study.serve import HARDENED_OPTIONS, PARTICIPANT_APP, serve_argv
from study.session import apply_answers, widget_args

cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a long lab password"


def test_participant_app_stands_alone():
    """A pages/ folder beside the script would put every researcher page on the participant server."""
    assert not (PARTICIPANT_APP.parent / "pages").exists()
    argv = serve_argv("127.0.0.1", 8600)
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8600"
    for name in ("server.headless", "server.enableXsrfProtection", "runner.postScriptGC", "browser.gatherUsageStats",
                 "client.toolbarMode", "client.showErrorDetails", "client.showSidebarNavigation", "server.maxUploadSize"):
        assert options[f"--{name}"] == HARDENED_OPTIONS[name]
    assert HARDENED_OPTIONS["browser.gatherUsageStats"] == "false" and HARDENED_OPTIONS["client.showErrorDetails"] == "none"
    known = set(st_config._config_options_template)  # every option we set exists in this Streamlit
    assert {name for name in HARDENED_OPTIONS} <= known


@pytest.mark.parametrize("args, message", [
    (["--address", "0.0.0.0\n"], "not an IP address"), (["--address", "example.org"], "not an IP address"),
    (["--port", "70000"], "not a TCP port"),
])
def test_serve_refuses_bad_options(tmp_path, study_sets, args, message):
    db = tmp_path / "s.db"
    support.make_study(db, study_sets)
    result = subprocess.run([sys.executable, "-m", "study", "serve", "--db", str(db), *args], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_serve_refuses_missing_or_empty_database(tmp_path):
    for path in (tmp_path / "missing.db", tmp_path / "empty.db"):
        if path.name == "empty.db":
            open_db(path).close()
        result = subprocess.run([sys.executable, "-m", "study", "serve", "--db", str(path)], capture_output=True,
                                text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert ("does not exist" if path.name == "missing.db" else "no study yet") in result.stderr


def test_link_list_and_create_print_the_keyed_link(tmp_path, study_sets, capsys):
    db = str(tmp_path / "c.db")
    args = ["create", "--db", db, "--name", "cli", "--items-per-participant", "6", "--catch-set", str(study_sets["catch"]),
            "--base-url", "https://study.example.org"]
    for folder in study_sets["conditions"]:
        args += ["--set", str(folder)]
    assert cli(args) == 0
    key = get_study(open_db(db), "cli").link_key
    link = f"https://study.example.org/?study=cli&key={key}&PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}"
    assert link in capsys.readouterr().out
    assert cli(["link", "cli", "--db", db, "--base-url", "https://study.example.org/"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(link) and out.endswith("SESSION_ID={{%SESSION_ID%}}") and "\n" not in out
    assert cli(["list", "--db", db, "--base-url", "https://study.example.org"]) == 0
    assert f"key={key}" in capsys.readouterr().out
    assert cli(["link", "cli", "--db", db, "--base-url", "https://x.org/?a=b"]) == 2
    assert cli(["link", "nope", "--db", db]) == 2
    assert cli(["create", "--db", db, "--name", "bad\n", "--set", str(study_sets["conditions"][0])]) == 2
    assert "study name" in capsys.readouterr().err


def test_backup_command(tmp_path, study_sets, capsys):
    db = tmp_path / "s.db"
    support.make_study(db, study_sets)
    assert cli(["backup", "--db", str(db), "--out", str(tmp_path / "b.db")]) == 0
    assert "backup written" in capsys.readouterr().out
    assert cli(["check", "--db", str(tmp_path / "b.db")]) == 0
    assert cli(["backup", "--db", str(db), "--out", str(tmp_path / "b.db")]) == 2  # never overwrites
    assert cli(["backup", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "c.db")]) == 2


def test_widget_protocol_stores_once_in_order(tmp_path, study_sets):
    support.make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    p = enrol(db, study, "w1")
    args = widget_args(db, study, p.id)
    first, second = args["trials"][0]["id"], args["trials"][1]["id"]
    assert len(args["trials"]) == 3 and args["trials"][0]["practice"] and args["trials"][0]["answer"] is not None
    answer = {"assignment_id": first, "label": 2, "rt_ms": 800.0, "shown_ms": None, "input": "click"}
    handled: set[int] = set()
    out = apply_answers(db, study, p.id, {"seq": 1, "answers": [answer]}, handled)
    assert out.handled == [first] and not out.rejected
    # a resend of both (the first was acknowledged in a render that never arrived) stores the second once
    both = {"seq": 2, "answers": [answer, {**answer, "assignment_id": second, "label": 4}]}
    assert apply_answers(db, study, p.id, both, set()).handled == [first, second]
    assert apply_answers(db, study, p.id, both, set()).handled == [first, second]
    assert db.execute("SELECT assignment_id, label FROM responses ORDER BY id").fetchall() == [(first, 2), (second, 4)]
    assert widget_args(db, study, p.id)["trials"][0]["id"] not in (first, second)
    # garbage is ignored or rejected without storing anything, and never raises
    third = widget_args(db, study, p.id)["trials"][0]["id"]
    for value in (None, "x", {"answers": "no"}, {"answers": [{"assignment_id": "1"}]},
                  {"answers": [{**answer, "assignment_id": third, "label": 11}]},
                  {"answers": [{**answer, "assignment_id": third + 1}]}):
        out = apply_answers(db, study, p.id, value, set())
        assert not out.handled
    assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 2


@pytest.fixture()
def public_address():
    """Run AppTest as if the server listened on every interface (Streamlit's default)."""
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield
    st_config.set_option("server.address", before)


def test_researcher_app_needs_password_beyond_loopback(public_address, monkeypatch, tmp_path):
    monkeypatch.delenv("STUDY_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("RANDMASK_APP_PASSWORD", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and "needs a password" in " ".join(e.value for e in at.error)
    assert not at.sidebar.multiselect and not at.text_input  # nothing of the lab, no way in
    monkeypatch.setenv("RANDMASK_APP_PASSWORD", PASSWORD)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and at.text_input(key="lab_password") and not at.sidebar.multiselect
    at.text_input(key="lab_password").input("wrong guess").run()
    at.button[0].click().run()
    assert "Wrong password" in " ".join(e.value for e in at.error)


def test_researcher_app_lockout_outlives_sessions(public_address, monkeypatch):
    monkeypatch.setenv("RANDMASK_APP_PASSWORD", PASSWORD)
    import streamlit as st

    import study.auth as auth
    st.cache_resource.clear()  # a new server process: no failures counted yet
    for _ in range(auth.MAX_FAILURES):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()  # a new session each time
        at.text_input(key="lab_password").input("guess")
        at.button[0].click().run()
    fresh = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert "Too many wrong passwords" in " ".join(e.value for e in fresh.error) and not fresh.text_input


def test_researcher_app_guesses_lock_only_their_address(public_address, monkeypatch):
    """Old code: five wrong lab passwords from one stranger locked the gate for every visitor."""
    monkeypatch.setenv("RANDMASK_APP_PASSWORD", PASSWORD)
    import streamlit as st

    import study.auth as auth
    import study.guard
    st.cache_resource.clear()
    import study.auth
    by_address = study.auth.client_keys  # AppTest gives every test session the same id: count by address only
    monkeypatch.setattr(study.auth, "client_keys", lambda address, session_id=None: by_address(address))
    monkeypatch.setattr(study.guard, "client_address", lambda remote, headers: "203.0.113.7")
    for _ in range(auth.MAX_FAILURES):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.text_input(key="lab_password").input("guess")
        at.button[0].click().run()
    assert "Too many wrong passwords" in " ".join(e.value for e in AppTest.from_file(str(ROOT / "app.py")).run().error)
    monkeypatch.setattr(study.guard, "client_address", lambda remote, headers: "198.51.100.2")
    other = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not other.error and other.text_input(key="lab_password")


def test_participant_headers_middleware():
    """Frame headers on every HTTP response (the widget's iframe may be framed by the page only), metrics hidden."""
    import asyncio

    from study.serve import ParticipantHeaders

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-frame-options", b"ALLOWALL")]})
        await send({"type": "http.response.body", "body": b"page"})

    def get(path: str) -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        asyncio.run(ParticipantHeaders(app)({"type": "http", "path": path}, None, send))
        return sent

    page = get("/")
    assert page[0]["status"] == 200 and dict(page[0]["headers"]) == {
        b"x-frame-options": b"DENY", b"content-security-policy": b"frame-ancestors 'none'"}
    widget = dict(get("/component/randmask_study_label.study_trial/index.html")[0]["headers"])
    assert widget[b"content-security-policy"] == b"frame-ancestors 'self'"
    metrics = get("/_stcore/metrics")
    assert metrics[0]["status"] == 404 and metrics[1]["body"] == b"not found"
