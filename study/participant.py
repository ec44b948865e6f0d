"""What the labeling page calls: join, consent (allocation), next trial, record an answer.

A participant can only ever read their own next item: `next_trial` returns the first unanswered
assignment of the given participant and nothing else, and `record_answer` accepts only that
assignment (or repeats of an answer already stored, which change nothing).
"""
from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

from .assign import AllocationError, Candidate, choose_items, order_items, participant_rng
from .db import write_transaction
from .design import Study, get_study, utc_now

MODES = ("unlimited", "timed")
INPUTS = ("keyboard", "click", "button")
MAX_RT_MS = 24 * 3600 * 1000.0
# A genuine participant answers the first practice image within this after consent; until then their pending
# items outrank those of older consents that never answered (consent-only bots, mostly) when one must go past k.
FIRST_ANSWER_GRACE_S = 60.0


class StudyClosed(RuntimeError):
    pass


class StudyFull(RuntimeError):
    pass


class StudyBusy(StudyFull):
    """Every image still needing labels is reserved by someone active right now: try again later."""


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


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _cutoff(study: Study) -> str:
    """Pending items of participants whose last answer (or consent) is older than this steer nobody."""
    return _ago(60 * study.abandon_after_min)


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


def _loads(db: sqlite_utils.Database, study: Study, skip: list[int] | None = None) -> list[Candidate]:
    """Trial and catch items with their labels so far: answers of included participants, plus unanswered
    items of consented, included participants active within the inactivity window, also counted by who holds
    them (people who have answered something; consents younger than FIRST_ANSWER_GRACE_S), so that when an
    item must go past k, it is one whose holders are least likely to answer (see `choose_items`). `skip`:
    assignments left out (a list being chosen again)."""
    rows = db.execute(
        """
        WITH answered AS (
            SELECT r.item_id, count(*) AS n FROM responses r JOIN participants p ON p.id = r.participant_id
            WHERE p.study_id = :study AND p.excluded = 0 GROUP BY r.item_id),
        holders AS (
            SELECT p.id, EXISTS (SELECT 1 FROM responses r WHERE r.participant_id = p.id) AS answering,
                   p.consent_at >= :grace AS fresh
            FROM participants p
            WHERE p.study_id = :study AND p.excluded = 0 AND p.timed_out_at IS NULL AND p.active_at >= :cutoff),
        pending AS (
            SELECT a.item_id, count(*) AS n, sum(h.answering) AS answering,
                   sum(h.answering OR h.fresh) AS fresh
            FROM assignments a JOIN holders h ON h.id = a.participant_id
            WHERE NOT EXISTS (SELECT 1 FROM responses r WHERE r.assignment_id = a.id)
              AND a.id NOT IN (SELECT value FROM json_each(:skip))
            GROUP BY a.item_id)
        SELECT i.id, i.role, i.condition, i.test_index,
               coalesce(answered.n, 0) + coalesce(pending.n, 0), coalesce(answered.n, 0),
               coalesce(answered.n, 0) + coalesce(pending.answering, 0),
               coalesce(answered.n, 0) + coalesce(pending.fresh, 0)
        FROM items i
        LEFT JOIN answered ON answered.item_id = i.id
        LEFT JOIN pending ON pending.item_id = i.id
        WHERE i.study_id = :study AND i.role IN ('trial', 'catch')
        ORDER BY i.id
        """, {"study": study.id, "cutoff": _cutoff(study), "grace": _ago(FIRST_ANSWER_GRACE_S),
              "skip": json.dumps(skip or [])}).fetchall()
    return [Candidate(*r) for r in rows]


def consent(db: sqlite_utils.Database, participant: Participant) -> Participant:
    """Record consent and allocate the participant's items, atomically. Idempotent."""
    with write_transaction(db):
        already = db.execute("SELECT consent_at FROM participants WHERE id = ?", [participant.id]).fetchone()[0]
        if already is None:
            _allocate(db, participant)
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
            _allocate(db, participant)  # raises (and so rolls the insert back) when there is no place
            now = utc_now()
            db.execute("UPDATE participants SET consent_at = ?, last_seen_at = ?, active_at = ? WHERE id = ?",
                       [now, now, now, participant.id])
            row = db.execute(f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE id = ?", [participant.id]).fetchone()
    return _participant(row)


def _allocate(db: sqlite_utils.Database, participant: Participant) -> None:
    """Insert the participant's full item list; call inside the write transaction."""
    slug = db.execute("SELECT slug FROM studies WHERE id = ?", [participant.study_id]).fetchone()[0]
    study = get_study(db, slug)
    if study.status != "open":
        raise StudyClosed(f"study {study.slug} is closed")
    _check_room(db, study)
    candidates = _loads(db, study)
    rng = participant_rng(study.seed, participant.external_id)
    try:
        chosen = choose_items(candidates, study.conditions, study.trials_per_condition,
                              study.catch_per_participant, study.labels_per_item, rng)
    except AllocationError as e:
        raise StudyFull(str(e)) from e
    practice = [r[0] for r in db.execute(
        "SELECT id FROM items WHERE study_id = ? AND role = 'practice' ORDER BY id", [study.id])]
    ordered = practice + order_items(chosen, rng)
    db["assignments"].insert_all(
        [{"participant_id": participant.id, "item_id": item_id, "position": pos} for pos, item_id in enumerate(ordered)])


def _settle_list(db: sqlite_utils.Database, participant_id: int) -> None:
    """At a participant's first answer, choose again the part of their list no page has been sent yet, from the
    loads of this moment (call inside the write transaction). The list given at consent is provisional: when
    invented ids flood the study, every image may be held past k by lists that will never be answered, and two
    genuine participants who consented a moment apart could not be told from the bots or each other. Once one
    answers, the other's holds count as a participant's who answers (see `choose_items`), so whoever answers
    second steers clear of the first, onto images only bots hold."""
    rows = db.execute(
        """
        SELECT a.id, a.item_id, i.role, i.condition, i.test_index,
               EXISTS (SELECT 1 FROM responses r WHERE r.assignment_id = a.id)
               OR EXISTS (SELECT 1 FROM servings v WHERE v.assignment_id = a.id)
        FROM assignments a JOIN items i ON i.id = a.item_id WHERE a.participant_id = ? ORDER BY a.position
        """, [participant_id]).fetchall()
    again = [r for r in rows if r[2] in ("trial", "catch") and not r[5]]
    if not again:
        return
    slug, external_id = db.execute("SELECT s.slug, p.external_id FROM participants p JOIN studies s "
                                   "ON s.id = p.study_id WHERE p.id = ?", [participant_id]).fetchone()
    study = get_study(db, slug)
    slots = [(role, condition if role == "trial" else "") for _, _, role, condition, _, _ in again]
    rng = participant_rng(study.seed, external_id, stream=1)
    ids = [r[0] for r in again]
    held = {item: assignment for assignment, item, *_ in again}
    try:  # from the loads without this list's own provisional holds
        chosen = choose_items(_loads(db, study, skip=ids), study.conditions, 0, 0, study.labels_per_item, rng,
                              slots=slots, taken=frozenset(r[4] for r in rows if r not in again))
    except AllocationError as e:  # cannot happen for a list that was valid at consent; refuse, keep nothing
        raise StudyFull(str(e)) from e
    # rows keep their ids and positions (nothing outside the database knows them yet): an item chosen again stays
    # where it was, the new ones take the other rows in a random order
    free = [i for item, i in held.items() if item not in chosen]
    new = order_items([item for item in chosen if item not in held], rng)
    db.conn.executemany("UPDATE assignments SET item_id = ? WHERE id = ?", list(zip(new, free, strict=True)))


def _check_room(db: sqlite_utils.Database, study: Study) -> None:
    """Admit a new participant while any trial item still lacks a counted label.

    Nothing is reserved for anyone: pending items only steer newcomers towards other images (as load), so
    invented ids, however many, never keep a real participant out. The cap of k is kept by counting, not by
    refusing: an item's first k answers of included participants count; later ones are surplus."""
    if places_needed(db, study) == 0:
        raise StudyFull(f"study {study.slug} has all the labels it needs")


def places_needed(db: sqlite_utils.Database, study: Study) -> int:
    """How many more full participant lists the trial labels still missing would fill (rounded up); counted
    labels only (answers of included participants, at most k per item), reservations left out."""
    k = study.labels_per_item
    missing = db.execute(
        """
        SELECT coalesce(sum(max(0, :k - coalesce(n, 0))), 0) FROM items i LEFT JOIN (
            SELECT r.item_id, count(*) AS n FROM responses r JOIN participants p ON p.id = r.participant_id
            WHERE p.study_id = :study AND p.excluded = 0 GROUP BY r.item_id) c ON c.item_id = i.id
        WHERE i.study_id = :study AND i.role = 'trial'
        """, {"k": k, "study": study.id}).fetchone()[0]
    return math.ceil(missing / (study.trials_per_condition * len(study.conditions)))


def surplus_response_ids(db: sqlite_utils.Database, study: Study) -> set[int]:
    """Answers beyond an item's first k of included participants (in the order they were stored): kept and
    exported, flagged, and left out of the k-label statistics. Excluding someone moves later answers up."""
    rows = db.execute(
        """
        SELECT id FROM (
            SELECT r.id, row_number() OVER (PARTITION BY r.item_id ORDER BY r.id) AS n
            FROM responses r JOIN participants p ON p.id = r.participant_id JOIN items i ON i.id = r.item_id
            WHERE p.study_id = ? AND p.excluded = 0 AND i.role = 'trial')
        WHERE n > ?
        """, [study.id, study.labels_per_item]).fetchall()
    return {r[0] for r in rows}


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
            _settle_list(db, participant_id)
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
