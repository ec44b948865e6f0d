"""Whatever a visitor can repeat is logged once per kind and interval, with a count (study.errors.REFUSALS): a
script sending the same refused message ten thousand times adds a few lines, each other kind still gets its own,
every error id a visitor is shown is in the line that counts their hit, and nothing secret reaches the log."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import test_study_support as support
from streamlit.testing.v1 import AppTest

import study.errors
from study import enrol, get_study, open_db
from study.errors import DETAIL_MAX, RefusalLog
from study.serve import handshake_log_filter
from study.session import apply_answers

cifar, study_sets = support.cifar, support.study_sets
LABEL_PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "study_label.py")
LINE = re.compile(r"^(E-[0-9A-F]{8}) (?:refused )?(\d+) x (.+?) in the last (\d+) s")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """The study log's lines, whatever configure_logging did to the logger's propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def of(self, kind: str) -> list[tuple[str, int]]:
        """(error id, count) of each line of this kind."""
        return [(m[1], int(m[2])) for m in map(LINE.match, self.messages) if m and m[3] == kind]


@pytest.fixture
def lines():
    handler, logger = Lines(), logging.getLogger("study")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def refusals(monkeypatch):
    """A fresh process-wide refusal log (earlier tests' hits would shift its intervals)."""
    fresh = RefusalLog()
    monkeypatch.setattr(study.errors, "REFUSALS", fresh)
    for module in ("study.guard", "study.session", "study.serve"):
        monkeypatch.setattr(f"{module}.REFUSALS", fresh)
    return fresh


def test_ten_thousand_refusals_of_one_kind_make_a_few_lines_that_count_them(lines):
    """10,000 hits over 150 s, another kind now and then: one line per kind per minute, and the counts add up
    to every hit once the burst is flushed. Old code: the hits after the last line were never counted anywhere
    (no flush), so its lines summed to less than 10,000."""
    clock = Clock()
    log = RefusalLog(interval_s=60, clock=clock)
    for n in range(10_000):
        log.refused("spam", "detail")
        if n % 2500 == 0:
            log.refused(f"rare {n // 2500}")
        clock.now += 0.015
    assert len(lines.of("spam")) == 3  # at 0 s, 60 s, 120 s
    clock.now += 60
    assert log.flush() == 1 and log.flush() == 0  # the held-back tail, once
    counted = lines.of("spam")
    assert len(counted) == 4 and sum(n for _, n in counted) == 10_000
    assert all(len(lines.of(f"rare {i}")) == 1 for i in range(4))  # each other kind still logged
    assert len(lines.messages) == 8


def test_every_error_id_shown_is_in_the_line_that_counts_it(lines):
    clock = Clock()
    log = RefusalLog(interval_s=60, clock=clock)
    shown = []
    for _ in range(3):
        shown += [log.refusal_id("bad links") for _ in range(40)]
        clock.now += 61
    log.flush()
    counted = dict(lines.of("bad links"))
    assert {eid: shown.count(eid) for eid in set(shown)} == counted  # each id: exactly the hits its line counts
    assert sum(counted.values()) == 120 and len(counted) == 4


def test_details_are_one_short_line(lines):
    log = RefusalLog()
    log.refused("labels", "got '" + "A" * 1_000_000 + "'\n2026-01-01 WARNING study: forged line")
    (message,) = lines.messages
    assert "\n" not in message and len(message) < DETAIL_MAX + 100


def test_failures_are_logged_once_a_minute_with_their_first_traceback(lines):
    clock = Clock()
    log = RefusalLog(interval_s=60, clock=clock)
    ids = []
    for _ in range(500):
        try:
            raise RuntimeError("database is locked")
        except RuntimeError as e:
            ids.append(log.failed("page failures", f"{type(e).__name__}: {e}", exc_info=True))
    clock.now += 61
    log.flush()
    assert [n for _, n in lines.of("page failures")] == [1, 499] and len(set(ids)) == 2


def test_spam_naming_another_participants_item_logs_once(tmp_path, study_sets, lines, refusals):
    """10,000 widget messages of one participant naming another's item (the real storing code): all refused,
    one log line; the line names neither participant's link id."""
    support.make_study(tmp_path / "s.db", study_sets)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    mine, theirs = enrol(db, study, "PROLIFICmine1"), enrol(db, study, "PROLIFICtheirs2")
    target = db.execute("SELECT id FROM assignments WHERE participant_id = ? ORDER BY position LIMIT 1",
                        [theirs.id]).fetchone()[0]
    for seq in range(10_000):
        value = {"seq": seq, "answers": [{"assignment_id": target, "label": 1, "rt_ms": 300, "input": "click"}]}
        assert apply_answers(db, study, mine.id, value).rejected == [target]
    assert len(lines.of("widget answers rejected")) == 1 and len(lines.messages) == 1
    assert "PROLIFIC" not in lines.messages[0]
    assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 0


def test_the_page_logs_each_kind_of_bad_link_once_a_minute(tmp_path, study_sets, monkeypatch, lines, refusals):
    """The labeling page itself (AppTest): 10 visits with a wrong key, then a bad participant id and an unknown
    study. Old code: one ERROR line per visit (report), 12 lines, the wrong key's 10 among them. Now one line per
    kind, at WARNING, with no key or participant id; every error id shown is in the log once flushed."""
    path = tmp_path / "s.db"
    support.make_study(path, study_sets)
    monkeypatch.setenv("STUDY_DB", str(path))
    db = open_db(path)
    key = get_study(db, "s1").link_key
    db.close()
    wrong = "W" * 22

    def visit(**params) -> str:
        at = AppTest.from_file(LABEL_PAGE, default_timeout=300)  # a loaded machine
        for name, value in params.items():
            at.query_params[name] = value
        at.run()
        assert not at.exception
        shown = " ".join(e.value for e in at.error)
        return re.search(r"error id (E-[0-9A-F]{8})", shown)[1]

    ids = [visit(study="s1", key=wrong, pid=f"PROLIFICvisitor{n}") for n in range(10)]
    ids.append(visit(study="s1", key=key, pid="bad id!"))
    ids.append(visit(study="nope", key=key, pid="PROLIFICsomeone"))
    assert len(lines.of("links without the study's key")) == 1
    assert len(lines.of("links that do not parse")) == 1 and len(lines.of("links naming no study")) == 1
    refusals.interval_s = 0  # the minute is over
    refusals.flush()
    logged = {eid: n for kind in ("links without the study's key", "links that do not parse", "links naming no study")
              for eid, n in lines.of(kind)}
    assert {eid: ids.count(eid) for eid in set(ids)} == logged and sum(logged.values()) == 12
    text = "\n".join(lines.messages)
    assert key not in text and wrong not in text and "PROLIFIC" not in text


def test_uvicorn_handshake_lines_are_dropped_and_refusals_counted(lines, refusals):
    """uvicorn logs every websocket handshake with the client's address (one line per page load, one per refused
    attempt). Old launcher: 1,000 refused handshakes were 1,000 lines with addresses. Now none of uvicorn's, and
    one of ours with the count once the minute is over; other uvicorn lines pass."""
    def record(msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)

    assert not handshake_log_filter(record('%s - "WebSocket %s" [accepted]', "203.0.113.5:4711", "/_stcore/stream"))
    assert not any([handshake_log_filter(record('%s - "WebSocket %s" 403', "203.0.113.5:4711", "/_stcore/stream"))
                    for _ in range(1000)])
    assert handshake_log_filter(record("Started server process [%d]", 42))
    refusals.interval_s = 0
    refusals.flush()
    assert [n for _, n in lines.of("websocket handshakes refused")] == [1, 999]
    assert "203.0.113.5" not in "\n".join(lines.messages)
