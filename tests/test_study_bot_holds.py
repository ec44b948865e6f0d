"""Bot waves must not waste genuine participants' labels. A consent-only visitor's list used to count as load
exactly like answers: once invented ids held every unanswered image a few times over, an image that already had
its k answers (load k, no holds) looked lighter than one that still needed them (0 answers, k + 1 holds), so
the next genuine participant was sent to the answered one and gave a surplus label. Now answers already given
decide first (an image with k of them is used only when nothing else fits the quota), holds of participants who
answer count as load, holds of fresh consents count as load only for their first answer's grace time, and older
holds of people who never answered only break ties."""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import test_study_support as support

from study import enrol, get_study, next_trial, open_db, record_answer
from study.participant import FIRST_ANSWER_GRACE_S, places_needed, surplus_response_ids

cifar, study_sets = support.cifar, support.study_sets


def _answer_all(db, participant_id: int) -> None:
    while (trial := next_trial(db, participant_id)) is not None:
        assert record_answer(db, participant_id, trial.assignment_id, 3, rt_ms=400.0, mode="unlimited",
                             input="click").stored


def _age(db, participant_id: int, seconds: float) -> None:
    """Move a participant's consent (and last activity) `seconds` into the past, still within the inactivity window."""
    past = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    db.execute("UPDATE participants SET consent_at = ?, active_at = ? WHERE id = ?", [past, past, participant_id])


def _trial_items(db, participant_id: int) -> set[int]:
    return {r[0] for r in db.execute("SELECT a.item_id FROM assignments a JOIN items i ON i.id = a.item_id "
                                     "WHERE a.participant_id = ? AND i.role = 'trial'", [participant_id])}


def _labels(db) -> Counter:
    return Counter(r[0] for r in db.execute("SELECT r.item_id FROM responses r JOIN items i ON i.id = r.item_id "
                                            "WHERE i.role = 'trial'"))


@pytest.mark.parametrize("bot_age_s", [0.0, FIRST_ANSWER_GRACE_S + 60])
def test_bot_waves_between_genuine_participants_leave_no_surplus(tmp_path, study_sets, bot_age_s):
    """k = 1, 12 images, 3 a list: a genuine participant finishes, 5 consent-only bots come, the next genuine
    one, and so on. Old code: after the first wave the 3 answered images (load 1) were as light as the ones
    bots held, the least-loaded choice sent later participants to them, and labels went to waste (surplus)
    while other images got none. Now the 4 genuine lists cover the 12 images exactly once, whether the bots
    are fresh or past their grace time."""
    support.make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=12,
                       items_per_participant=3, catch_per_participant=0, conditions=["clean"], practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    for wave in range(4):
        _answer_all(db, enrol(db, study, f"genuine{wave}").id)
        if wave == 3:  # every image has its label: the study takes nobody more
            break
        for n in range(5):
            bot = enrol(db, study, f"bot{wave}x{n}")
            _age(db, bot.id, bot_age_s)
    assert surplus_response_ids(db, study) == set()
    labels = _labels(db)
    assert len(labels) == 12 and set(labels.values()) == {1}
    assert places_needed(db, study) == 0


def test_a_fresh_genuine_consent_outweighs_older_bot_holds(tmp_path, study_sets):
    """k = 1, 6 images, 3 a list. A genuine participant consents (reading the instructions, no answer yet); three
    bots consent and never answer (their holds older than the grace time): they pile onto the other 3 images.
    A second genuine participant must get those 3, not the first one's: both will answer. Old code counted
    the bots' 3 holds above the first participant's 1 and sent the second to the same 3 images (3 surplus
    labels, 3 images without any)."""
    support.make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=6,
                       items_per_participant=3, catch_per_participant=0, conditions=["clean"], practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    first = enrol(db, study, "first")
    for n in range(3):
        _age(db, enrol(db, study, f"bot{n}").id, FIRST_ANSWER_GRACE_S + 30)
    second = enrol(db, study, "second")
    assert _trial_items(db, first.id).isdisjoint(_trial_items(db, second.id))
    _answer_all(db, first.id)
    _answer_all(db, second.id)
    assert surplus_response_ids(db, study) == set() and places_needed(db, study) == 0


def test_holds_of_participants_who_answer_still_steer_newcomers(tmp_path, study_sets):
    """A participant who has answered (here: long after consent, past the grace time) keeps steering newcomers
    away from their unanswered images while active: discounting holds must not discount theirs."""
    support.make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=6,
                       items_per_participant=3, catch_per_participant=0, conditions=["clean"], practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    first = enrol(db, study, "first")
    _age(db, first.id, FIRST_ANSWER_GRACE_S + 30)
    trial = next_trial(db, first.id)
    record_answer(db, first.id, trial.assignment_id, 1, rt_ms=400.0, mode="unlimited", input="click")
    second = enrol(db, study, "second")
    assert _trial_items(db, first.id).isdisjoint(_trial_items(db, second.id))
