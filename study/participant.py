"""What the labeling page calls: join, consent (allocation), next trial, record an answer. Which images a list
holds is chosen in study.allocation.

A participant can only ever read their own next item: `next_trial` returns the first unanswered
assignment of the given participant and nothing else, and `record_answer` accepts only that
assignment (or repeats of an answer already stored, which change nothing).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import sqlite_utils

from .allocation import StudyClosed, allocate, settle_list
from .db import write_transaction
from .design import Study, utc_now

MODES = ("unlimited", "timed")
INPUTS = ("keyboard", "click", "button")
MAX_RT_MS = 24 * 3600 * 1000.0


class AnswerRejected(ValueError):
    """An answer that does not fit: wrong participant, not the current item, bad label."""


@dataclass(frozen=True)
class Participant:
    id: int
    uid: str
    study_id: int
    external_id: str
    consent_at: str | None
    completed_at: str | None
    excluded: bool
    timed_out_at: str | None = None


@dataclass(frozen=True)
class Trial:
    assignment_id: int
    number: int  # 1-based position among all of this participant's items (practice included)
    total: int
    practice_total: int
    is_practice: bool
    png: bytes
    practice_label: int | None  # the answer, for feedback - practice items only


@dataclass(frozen=True)
class AnswerResult:
    stored: bool  # False: this answer was already stored (double click, retry) or could not be (timed out)
    label: int  # the label on record (-1 when timed out)
    practice_label: int | None
    completed: bool
    timed_out: bool = False  # the participant's reservation lapsed and their next images went to others


_PARTICIPANT_COLUMNS = "id, uid, study_id, external_id, consent_at, completed_at, excluded, timed_out_at"


def _participant(row) -> Participant:
    return Participant(*row[:6], excluded=bool(row[6]), timed_out_at=row[7])


def get_participant(db: sqlite_utils.Database, study: Study, external_id: str) -> Participant | None:
    row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE study_id = ? AND external_id = ?",
                     [study.id, external_id]).fetchone()
    return _participant(row) if row else None


def join(db: sqlite_utils.Database, study: Study, external_id: str, *, external_study_id: str | None = None,
         external_session_id: str | None = None) -> Participant:
    """Find or register the participant (idempotent: a reload returns the same row)."""
    existing = get_participant(db, study, external_id)
    if existing is not None:
        db.execute("UPDATE participants SET last_seen_at = ? WHERE id = ?", [utc_now(), existing.id])
        return existing
    with write_transaction(db):
        status = db.execute("SELECT status FROM studies WHERE id = ?", [study.id]).fetchone()[0]
        if status != "open":
            raise StudyClosed(f"study {study.slug} is closed")
        now = utc_now()
        db.execute(
            "INSERT INTO participants (study_id, uid, external_id, external_study_id, external_session_id, joined_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study_id, external_id) DO NOTHING",
            [study.id, "P" + secrets.token_hex(6), external_id, external_study_id, external_session_id, now, now])
    found = get_participant(db, study, external_id)
    assert found is not None
    return found


def consent(db: sqlite_utils.Database, participant: Participant) -> Participant:
    """Record consent and allocate the participant's items, atomically. Idempotent."""
    with write_transaction(db):
        already = db.execute("SELECT consent_at FROM participants WHERE id = ?", [participant.id]).fetchone()[0]
        if already is None:
            allocate(db, participant.id, participant.study_id, participant.external_id)
            now = utc_now()
            db.execute("UPDATE participants SET consent_at = ?, last_seen_at = ?, active_at = ? WHERE id = ?",
                       [now, now, now, participant.id])
    row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE id = ?", [participant.id]).fetchone()
    return _participant(row)


def enrol(db: sqlite_utils.Database, study: Study, external_id: str, *, external_study_id: str | None = None,
          external_session_id: str | None = None) -> Participant:
    """Register, consent and allocate in one transaction: a refused visitor (study full, busy or closed)
    leaves no row behind. Idempotent: an existing participant is returned as they are."""
    with write_transaction(db):
        row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE study_id = ? AND external_id = ?",
                         [study.id, external_id]).fetchone()
        if row is None:
            now = utc_now()
            participant_id = db.execute(
                "INSERT INTO participants (study_id, uid, external_id, external_study_id, external_session_id, joined_at, "
                "last_seen_at, active_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [study.id, "P" + secrets.token_hex(6), external_id, external_study_id, external_session_id, now, now,
                 now]).lastrowid
            row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE id = ?", [participant_id]).fetchone()
        participant = _participant(row)
        if participant.consent_at is None:
            # raises (and so rolls the insert back) when there is no place
            allocate(db, participant.id, participant.study_id, participant.external_id)
            now = utc_now()
            db.execute("UPDATE participants SET consent_at = ?, last_seen_at = ?, active_at = ? WHERE id = ?",
                       [now, now, now, participant.id])
            row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE id = ?", [participant.id]).fetchone()
    return _participant(row)


def resume(db: sqlite_utils.Database, study: Study, participant: Participant) -> Participant:
    """Called when a participant comes back. Nothing lapses any more (nothing is reserved), so they simply go on;
    kept for callers of the earlier API."""
    return participant


def _next_assignment(db: sqlite_utils.Database, participant_id: int):
    return db.execute(
        """
        SELECT a.id, a.position, i.role, i.png, i.true_label
        FROM assignments a JOIN items i ON i.id = a.item_id
        WHERE a.participant_id = ? AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.assignment_id = a.id)
        ORDER BY a.position LIMIT 1
        """, [participant_id]).fetchone()


def progress(db: sqlite_utils.Database, participant_id: int) -> tuple[int, int, int]:
    """(answered, total, practice_total) for this participant."""
    total, practice, answered = db.execute(
        """
        SELECT count(*), coalesce(sum(i.role = 'practice'), 0),
               coalesce(sum(EXISTS (SELECT 1 FROM responses r WHERE r.assignment_id = a.id)), 0)
        FROM assignments a JOIN items i ON i.id = a.item_id WHERE a.participant_id = ?
        """, [participant_id]).fetchone()
    return answered, total, practice


def next_trial(db: sqlite_utils.Database, participant_id: int) -> Trial | None:
    """This participant's next unanswered item, or None when all are answered (or none allocated)."""
    row = _next_assignment(db, participant_id)
    if row is None:
        return None
    assignment_id, position, role, png, true_label = row
    _, total, practice_total = progress(db, participant_id)
    is_practice = role == "practice"
    return Trial(assignment_id=assignment_id, number=position + 1, total=total, practice_total=practice_total,
                 is_practice=is_practice, png=png, practice_label=true_label if is_practice else None)


def record_answer(db: sqlite_utils.Database, participant_id: int, assignment_id: int, label: int, *,
                  rt_ms: float | None, mode: str, input: str, shown_ms: float | None = None) -> AnswerResult:
    """Store one answer, exactly once. A repeat of a stored answer returns stored=False and changes nothing."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise AnswerRejected(f"label must be an integer 0-9, got {label!r}")
    if mode not in MODES:
        raise AnswerRejected(f"mode must be one of {MODES}")
    if input not in INPUTS:
        raise AnswerRejected(f"input must be one of {INPUTS}")
    for name, value in (("rt_ms", rt_ms), ("shown_ms", shown_ms)):
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= MAX_RT_MS):
            raise AnswerRejected(f"{name} must be a number of milliseconds, got {value!r}")
    with write_transaction(db):
        row = db.execute(
            """
            SELECT a.item_id, i.role, i.true_label, s.status
            FROM assignments a JOIN items i ON i.id = a.item_id JOIN studies s ON s.id = i.study_id
            WHERE a.id = ? AND a.participant_id = ?
            """, [assignment_id, participant_id]).fetchone()
        if row is None:
            raise AnswerRejected("this item is not assigned to this participant")
        item_id, role, true_label, status = row
        practice_label = true_label if role == "practice" else None
        stored = db.execute("SELECT label FROM responses WHERE assignment_id = ?", [assignment_id]).fetchone()
        if stored is not None:
            return AnswerResult(False, stored[0], practice_label, _all_answered(db, participant_id))
        if status != "open":
            raise StudyClosed("the study is closed")
        timed_out = db.execute("SELECT timed_out_at FROM participants WHERE id = ?", [participant_id]).fetchone()[0]
        if timed_out is not None:  # timed out under the earlier reservation scheme (schema 3 files)
            return AnswerResult(False, -1, practice_label, False, timed_out=True)
        current = _next_assignment(db, participant_id)
        if current is None or current[0] != assignment_id:
            raise AnswerRejected("answers must be given in order: this is not the current item")
        now = utc_now()
        first = db.execute("SELECT NOT EXISTS (SELECT 1 FROM responses WHERE participant_id = ?)",
                           [participant_id]).fetchone()[0]
        db.execute(
            "INSERT INTO responses (assignment_id, participant_id, item_id, label, rt_ms, shown_ms, mode, input, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [assignment_id, participant_id, item_id, label, rt_ms, shown_ms, mode, input, now])
        if first:
            settle_list(db, participant_id)
        completed = _all_answered(db, participant_id)
        db.execute("UPDATE participants SET last_seen_at = ?, active_at = ?, "
                   "completed_at = CASE WHEN ? THEN ? ELSE completed_at END WHERE id = ?",
                   [now, now, completed, now, participant_id])
    return AnswerResult(True, label, practice_label, completed)


def record_servings(db: sqlite_utils.Database, participant_id: int, page: str, assignment_ids: list[int]) -> None:
    """Record that `page` (one browser session: a reload starts another) was sent these trials of the participant,
    before it shows them: committed first, so a serving survives a crash of the server right after. A page sent
    the same trial again adds nothing; ids of other participants are ignored."""
    if not assignment_ids:
        return
    marks = ", ".join("?" for _ in assignment_ids)
    with write_transaction(db):
        db.execute(
            f"INSERT OR IGNORE INTO servings (assignment_id, page, served_at) "
            f"SELECT id, ?, ? FROM assignments WHERE participant_id = ? AND id IN ({marks})",
            [page, utc_now(), participant_id, *assignment_ids])


def _all_answered(db: sqlite_utils.Database, participant_id: int) -> bool:
    answered, total, _ = progress(db, participant_id)
    return total > 0 and answered == total


def trial_window(db: sqlite_utils.Database, participant_id: int, size: int) -> list[Trial]:
    """The participant's next `size` unanswered trials, in order: what the trial widget holds ahead."""
    rows = db.execute(
        """
        SELECT a.id, a.position, i.role, i.png, i.true_label
        FROM assignments a JOIN items i ON i.id = a.item_id
        WHERE a.participant_id = ? AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.assignment_id = a.id)
        ORDER BY a.position LIMIT ?
        """, [participant_id, size]).fetchall()
    if not rows:
        return []
    _, total, practice_total = progress(db, participant_id)
    return [Trial(assignment_id=aid, number=pos + 1, total=total, practice_total=practice_total,
                  is_practice=role == "practice", png=png, practice_label=label if role == "practice" else None)
            for aid, pos, role, png, label in rows]
