"""Admission and the k-label cap under random interleavings (hypothesis stateful test) against the real
assignment code and database: join, consent, answer, repeat an answer, idle past the window, return, reload,
exclusion and re-inclusion. After every step: no item has more than k counted labels (and the surplus is exactly
the answers beyond each item's first k of included participants), no acknowledged answer is lost, every
participant's list has the exact quota per condition, and nobody is refused while a label is still missing."""
from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import test_study_support as support
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from study import StudyFull, enrol, get_study, join, next_trial, open_db, record_answer
from study.admin import set_excluded
from study.allocation import places_needed, surplus_response_ids

cifar, study_sets = support.cifar, support.study_sets

DESIGNS = {  # small enough that studies fill up within a run
    "k1-one-condition": dict(labels_per_item=1, items_per_condition=6, items_per_participant=3, conditions=["clean"],
                             catch_per_participant=1),
    "k2-three-conditions": dict(labels_per_item=2, items_per_condition=4, items_per_participant=3,
                                catch_per_participant=1),
}


class Admission(RuleBasedStateMachine):
    template: Path  # a fresh study database, copied for every run

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="admission-"))
        shutil.copy(self.template, self.dir / "s.db")
        self.db = self.connect()
        self.study = get_study(self.db, "s1")
        self.k = self.study.labels_per_item
        self.trial_items = {r[0] for r in self.db.execute("SELECT id FROM items WHERE role = 'trial'")}
        self.people: dict[str, int] = {}  # external id -> participant id
        self.excluded: set[int] = set()
        self.acked: dict[int, tuple[int, int, int]] = {}  # assignment -> (participant, item, label)
        self.order: list[int] = []  # acknowledged assignments, in the order they were stored

    def connect(self):
        db = open_db(self.dir / "s.db")
        db.execute("PRAGMA synchronous = OFF")  # no fsync per answer: the test is about logic, not durability
        return db

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -------------------------------------------------------------------------------------------- model
    def counted(self) -> dict[int, list[int]]:
        """item -> assignments whose answers count: the first k of included participants, in storage order."""
        out: dict[int, list[int]] = defaultdict(list)
        for assignment in self.order:
            person, item, _ = self.acked[assignment]
            if item in self.trial_items and person not in self.excluded and len(out[item]) < self.k:
                out[item].append(assignment)
        return out

    def missing(self) -> int:
        counted = self.counted()
        return sum(self.k - len(counted[i]) for i in self.trial_items)

    def unfinished(self) -> list[int]:
        return [pid for pid in self.people.values() if next_trial(self.db, pid) is not None]

    # -------------------------------------------------------------------------------------------- rules
    @precondition(lambda self: len(self.people) < 6)  # enough to over-admit; more would only dilute the answers
    @rule()
    def join_and_consent(self) -> None:
        external = f"p{len(self.people)}"
        try:
            participant = enrol(self.db, self.study, external)
        except StudyFull:
            assert self.missing() == 0, "refused while labels are still missing"
            assert self.db.execute("SELECT count(*) FROM participants WHERE external_id = ?", [external]).fetchone()[0] == 0
            return
        self.people[external] = participant.id

    @precondition(lambda self: self.people)
    @rule(data=st.data(), label=st.integers(0, 9), burst=st.integers(1, 4))
    def answer(self, data, label: int, burst: int) -> None:
        """One participant answers their next `burst` items."""
        open_ones = self.unfinished()
        if not open_ones:
            return
        pid = data.draw(st.sampled_from(open_ones))
        for _ in range(burst):
            trial = next_trial(self.db, pid)
            if trial is None:
                return
            result = record_answer(self.db, pid, trial.assignment_id, label, rt_ms=300.0, mode="unlimited", input="click")
            assert result.stored and not result.timed_out  # nothing lapses: nobody is timed out any more
            item = self.db.execute("SELECT item_id FROM assignments WHERE id = ?", [trial.assignment_id]).fetchone()[0]
            self.acked[trial.assignment_id] = (pid, item, label)
            self.order.append(trial.assignment_id)

    @precondition(lambda self: self.acked)
    @rule(data=st.data(), label=st.integers(0, 9))
    def answer_again(self, data, label: int) -> None:
        """A resent answer (lost acknowledgement, second tab) changes nothing."""
        assignment = data.draw(st.sampled_from(sorted(self.acked)))
        pid, _, stored = self.acked[assignment]
        result = record_answer(self.db, pid, assignment, label, rt_ms=1.0, mode="unlimited", input="keyboard")
        assert not result.stored and result.label == stored

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def idle_past_the_window(self, data) -> None:
        pid = data.draw(st.sampled_from(sorted(self.people.values())))
        past = (datetime.now(UTC) - timedelta(minutes=self.study.abandon_after_min + 1)).isoformat(timespec="milliseconds")
        self.db.execute("UPDATE participants SET active_at = ? WHERE id = ?", [past, pid])

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def reload_or_return(self, data) -> None:
        """A reload (or a return after idling): a new connection, the same participant, the first unanswered item."""
        external = data.draw(st.sampled_from(sorted(self.people)))
        self.db.close()
        self.db = self.connect()
        again = join(self.db, self.study, external)
        assert again.id == self.people[external] and again.consent_at is not None and again.timed_out_at is None
        trial = next_trial(self.db, again.id)
        unanswered = self.db.execute(
            "SELECT min(position) FROM assignments a WHERE participant_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM responses r WHERE r.assignment_id = a.id)", [again.id]).fetchone()[0]
        assert (trial is None) == (unanswered is None) and (trial is None or trial.number == unanswered + 1)

    @precondition(lambda self: self.people)
    @rule(data=st.data(), excluded=st.booleans())
    def exclude_or_include(self, data, excluded: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(self.people.values())))
        uid = self.db.execute("SELECT uid FROM participants WHERE id = ?", [pid]).fetchone()[0]
        set_excluded(self.db, "s1", uid, excluded, "property test")
        (self.excluded.add if excluded else self.excluded.discard)(pid)

    # -------------------------------------------------------------------------------------------- invariants
    @invariant()
    def never_more_than_k_counted(self) -> None:
        surplus = surplus_response_ids(self.db, self.study)
        rows = self.db.execute("SELECT r.id, r.assignment_id, r.item_id FROM responses r JOIN items i ON i.id = r.item_id "
                               "WHERE i.role = 'trial'").fetchall()
        counted = Counter(item for rid, _, item in rows if rid not in surplus and
                          self.acked[_][0] not in self.excluded)
        assert all(n <= self.k for n in counted.values())
        expected = {a for items in self.counted().values() for a in items}
        included = {a for rid, a, _ in rows if self.acked[a][0] not in self.excluded}
        assert {a for rid, a, _ in rows if rid in surplus} == included - expected

    @invariant()
    def no_acknowledged_answer_lost(self) -> None:
        stored = dict(self.db.execute("SELECT assignment_id, label FROM responses").fetchall())
        assert stored == {a: label for a, (_, _, label) in self.acked.items()}

    @invariant()
    def quotas_exact(self) -> None:
        for pid in self.people.values():
            rows = self.db.execute("SELECT i.role, i.condition, i.test_index FROM assignments a JOIN items i ON i.id = a.item_id "
                                   "WHERE a.participant_id = ?", [pid]).fetchall()
            trials = Counter(c for role, c, _ in rows if role == "trial")
            assert trials == {c: self.study.trials_per_condition for c in self.study.conditions}
            assert sum(role == "catch" for role, _, _ in rows) == self.study.catch_per_participant
            assert len({t for _, _, t in rows}) == len(rows)  # never the same image twice

    @invariant()
    def places_needed_counts_missing_labels(self) -> None:
        per_list = self.study.trials_per_condition * len(self.study.conditions)
        assert places_needed(self.db, self.study) == math.ceil(self.missing() / per_list)


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_admission_never_exceeds_k_and_loses_nothing(tmp_path, study_sets, design):
    support.make_study(tmp_path / "template.db", study_sets, practice=False, **DESIGNS[design])
    Admission.template = tmp_path / "template.db"
    run_state_machine_as_test(Admission, settings=settings(
        max_examples=15, stateful_step_count=40, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
