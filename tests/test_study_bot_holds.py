"""Bot waves must not waste genuine participants' labels. A consent-only visitor's list counts as load exactly
like answers, so once invented ids held every unanswered image a few times over, an image that already had its
k answers (load k, no holds) looked lighter than one that still needed them (0 answers, k + 1 holds), and the
next genuine participant was sent to the answered one and gave a surplus label. Now, when an image must go past
k, the allocation ranks why it is full: by old holds of people who never answered (first choice), by holds of
fresh consents, by holds of people answering, by answers (last). Below k nothing changed (the property test
at the end), which keeps every item at exactly k when participants answer at once on two workers
(test_study_workers)."""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import test_study_support as support
from hypothesis import given, settings
from hypothesis import strategies as st

from study import enrol, get_study, next_trial, open_db, record_answer
from study.allocation import FIRST_ANSWER_GRACE_S, places_needed, surplus_response_ids
from study.assign import Candidate, choose_items
from study.participant import record_servings

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


def test_a_participant_answering_is_not_drowned_by_a_bot_flood(tmp_path, study_sets):
    """k = 1, 6 images, 3 a list. The first participant has answered one image and holds two more; then fresh bots
    consent (no answer, just now). The second participant must get the 3 images nobody answers, not the first's.
    A first fix counted fresh consents' holds like those of people answering: the bots' holds lifted every image
    to the first's level, the least-labelled choice could no longer tell them apart, and the second got the
    first's images (surplus when both answer)."""
    support.make_study(tmp_path / "s.db", study_sets, labels_per_item=1, items_per_condition=6,
                       items_per_participant=3, catch_per_participant=0, conditions=["clean"], practice=False)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    first = enrol(db, study, "first")
    trial = next_trial(db, first.id)
    record_answer(db, first.id, trial.assignment_id, 1, rt_ms=400.0, mode="unlimited", input="click")
    for n in range(6):
        enrol(db, study, f"bot{n}")
    second = enrol(db, study, "second")
    assert _trial_items(db, first.id).isdisjoint(_trial_items(db, second.id))
    _answer_all(db, first.id)
    _answer_all(db, second.id)
    assert surplus_response_ids(db, study) == set() and places_needed(db, study) == 0


@st.composite
def _candidates(draw):
    """Trial items on a few images and conditions, each with a load and counts by holder kind below it."""
    conditions = ["A", "B"]
    images = draw(st.integers(4, 7))
    out = []
    for c in conditions:
        for image in range(images):
            load = draw(st.integers(0, 4))
            fresh = draw(st.integers(0, load))
            answering = draw(st.integers(0, fresh))
            answered = draw(st.integers(0, answering))
            out.append((len(out), c, image, load, answered, answering, fresh))
    return out


@settings(max_examples=200, deadline=None)
@given(_candidates(), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_the_ranking_of_full_items_changes_no_list_that_fits_below_k(rows, k, seed):
    """Whenever the allocation without the holder counts can fill a list from items below k, the ranking gives
    the very same list; when it must take full items, it takes no more of those with k answers (certain
    surplus), trading them for items that only holds fill."""
    plain = [Candidate(i, "trial", c, img, load) for i, c, img, load, *_ in rows]
    ranked = [Candidate(i, "trial", c, img, load, *counts) for i, c, img, load, *counts in rows]
    full = {r[0] for r in rows if r[3] >= k}
    answered_full = {r[0] for r in rows if r[4] >= k}
    before = choose_items(plain, ["A", "B"], 2, 0, k, np.random.default_rng(seed))
    after = choose_items(ranked, ["A", "B"], 2, 0, k, np.random.default_rng(seed))
    if not full & set(before):
        assert after == before
    assert len(answered_full & set(after)) <= len(answered_full & set(before))


def test_a_full_item_is_taken_from_the_holders_least_likely_to_answer():
    """k = 1, one slot, four images all full for different reasons: the old bot hold goes first, then the fresh
    consent's, then the answering participant's, the answered image last."""
    why = {0: (1, 0, 0, 0), 1: (1, 0, 0, 1), 2: (1, 0, 1, 1), 3: (1, 1, 1, 1)}  # load, answered, answering, fresh
    for leave_out in range(4):
        cands = [Candidate(i, "trial", "A", i, *why[i]) for i in range(4) if i >= leave_out]
        for seed in range(5):
            assert choose_items(cands, ["A"], 1, 0, 1, np.random.default_rng(seed)) == [leave_out]


def test_genuine_participants_who_consent_among_fresh_bots_never_share_an_image(tmp_path, study_sets):
    """k = 1, 6 images, 3 a list, with practice images. Two genuine participants consent a moment apart among
    fresh bots: at consent nothing tells them from the bots or each other, so the second's list may overlap the
    first's (the old code: surplus in some of the 8 draws). The unshown part of a list is chosen again at the
    first answer, when the other genuine participant's holds count as someone answering: 0 surplus in every draw."""
    for draw in range(8):
        db_path = tmp_path / f"s{draw}.db"
        support.make_study(db_path, study_sets, labels_per_item=1, items_per_condition=6,
                           items_per_participant=3, catch_per_participant=0, conditions=["clean"])
        db = open_db(db_path)
        study = get_study(db, "s1")
        first = enrol(db, study, f"first{draw}")
        for n in range(3):
            enrol(db, study, f"bot{draw}x{n}")
        second = enrol(db, study, f"second{draw}")
        _answer_all(db, first.id)
        _answer_all(db, second.id)
        assert _trial_items(db, first.id).isdisjoint(_trial_items(db, second.id)), draw
        assert surplus_response_ids(db, study) == set() and places_needed(db, study) == 0
        db.close()


def test_choosing_again_keeps_what_a_page_was_sent_and_every_row(tmp_path, study_sets):
    """The widget holds trials ahead: a trial already sent to a page stays in the list, at its place, and the rows
    keep their ids and positions (only the item of an unsent row changes), with the quota per condition exact."""
    support.make_study(tmp_path / "s.db", study_sets, labels_per_item=1)
    db = open_db(tmp_path / "s.db")
    study = get_study(db, "s1")
    bots = [enrol(db, study, f"bot{n}") for n in range(4)]
    first = enrol(db, study, "first")
    rows = db.execute("SELECT a.id, a.position, a.item_id, i.role FROM assignments a JOIN items i ON i.id = a.item_id "
                      "WHERE a.participant_id = ? ORDER BY a.position", [first.id]).fetchall()
    sent = [r[0] for r in rows[:5]]  # 3 practice images and the first 2 trials
    record_servings(db, first.id, "page1", sent)
    for bot in bots:  # the bots' lists no longer steer anyone: they let the first's unsent items go to them
        db.execute("UPDATE participants SET excluded = 1 WHERE id = ?", [bot.id])
    trial = next_trial(db, first.id)
    record_answer(db, first.id, trial.assignment_id, 1, rt_ms=400.0, mode="unlimited", input="click")
    after = db.execute("SELECT a.id, a.position, a.item_id, i.role, i.condition, i.test_index FROM assignments a "
                       "JOIN items i ON i.id = a.item_id WHERE a.participant_id = ? ORDER BY a.position",
                       [first.id]).fetchall()
    assert [(r[0], r[1]) for r in after] == [(r[0], r[1]) for r in rows]
    assert [r[2] for r in after[:5]] == [r[2] for r in rows[:5]]
    assert Counter(r[4] for r in after if r[3] == "trial") == {c: 2 for c in study.conditions}
    assert sum(r[3] == "catch" for r in after) == 2 and len({r[5] for r in after}) == len(after)
