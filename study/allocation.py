"""Which images a participant's list holds, chosen in the database's write transaction: at consent from the
loads of that moment (`allocate`), and again at the first answer for the part no page has been sent yet
(`settle_list`); and the counting behind both: whether a study has room (`places_needed`) and which answers go
past an item's k (`surplus_response_ids`). The choice from the loads is study.assign's; the participant's flow
that calls these (join, consent, answers) is study.participant's.
"""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import sqlite_utils

from .assign import AllocationError, Candidate, choose_items, order_items, participant_rng
from .design import Study, get_study

# A genuine participant answers the first practice image within this after consent; until then their pending
# items outrank those of older consents that never answered (consent-only bots, mostly) when one must go past k.
FIRST_ANSWER_GRACE_S = 60.0


class StudyClosed(RuntimeError):
    pass


class StudyFull(RuntimeError):
    pass


class StudyBusy(StudyFull):
    """Every image still needing labels is reserved by someone active right now: try again later."""


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _cutoff(study: Study) -> str:
    """Pending items of participants whose last answer (or consent) is older than this steer nobody."""
    return _ago(60 * study.abandon_after_min)


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


def allocate(db: sqlite_utils.Database, participant_id: int, study_id: int, external_id: str) -> None:
    """Insert the participant's full item list; call inside the write transaction."""
    slug = db.execute("SELECT slug FROM studies WHERE id = ?", [study_id]).fetchone()[0]
    study = get_study(db, slug)
    if study.status != "open":
        raise StudyClosed(f"study {study.slug} is closed")
    _check_room(db, study)
    candidates = _loads(db, study)
    rng = participant_rng(study.seed, external_id)
    try:
        chosen = choose_items(candidates, study.conditions, study.trials_per_condition,
                              study.catch_per_participant, study.labels_per_item, rng)
    except AllocationError as e:
        raise StudyFull(str(e)) from e
    practice = [r[0] for r in db.execute(
        "SELECT id FROM items WHERE study_id = ? AND role = 'practice' ORDER BY id", [study.id])]
    ordered = practice + order_items(chosen, rng)
    db["assignments"].insert_all(
        [{"participant_id": participant_id, "item_id": item_id, "position": pos} for pos, item_id in enumerate(ordered)])


def settle_list(db: sqlite_utils.Database, participant_id: int) -> None:
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
