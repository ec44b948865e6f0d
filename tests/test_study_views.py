"""What the study's pages used to compute themselves, now in study/: the organiser's progress, participants
table, exclusions, Create form and export files, and the labeling page's simple mode."""
from __future__ import annotations

import io
import types
import zipfile

import pandas as pd
import pytest
import test_study_support as support

from study import Trial, enrol, get_study, list_studies, open_db
from study.admin import Overview, create_from_form, exclude_failing, study_from_form
from study.display import counts_text, failing_text, participants_table, progress_bar, retry_text
from study.export import csv_bytes, export_zip, participants_frame
from study.session import answer_mode, elapsed_ms, feedback_message, practice_feedback, trial_caption

cifar, study_sets = support.cifar, support.study_sets  # fixtures
FORM = {"slug": " s2 ", "title": " A title ", "sets": "", "catch_set": "", "practice_set": "  ", "labels_per_item": 2,
        "items_per_participant": 6, "catch_per_participant": 2, "presentation_ms": 0, "completion_code": "",
        "redirect_url": ""}


def overview(done: int, needed: int) -> Overview:
    return Overview(participants=5, consented=4, completed=3, excluded=1, answers=9, labels_needed=needed,
                    labels_done=done, per_condition=pd.DataFrame())


def trial(number: int, practice: bool) -> Trial:
    return Trial(assignment_id=40 + number, number=number, total=15, practice_total=3, is_practice=practice,
                 png=b"", practice_label=4 if practice else None)


# ------------------------------------------------------------------------------------------------ organiser
def test_progress_bar_counts_and_texts():
    assert progress_bar(overview(5, 20)) == (0.25, "5 of 20 labels")
    assert progress_bar(overview(30, 20), labels_per_item=3) == (1.0, "30 of 20 labels (3 per item)")  # capped
    assert progress_bar(overview(0, 0)) == (1.0, "0 of 0 labels")  # nothing to do is done
    assert counts_text(overview(0, 0)) == "Participants 5, consented 4, completed 3, excluded 1"
    assert retry_text(0.2) == "1 s" and retry_text(2.0) == "3 s"
    assert failing_text([], 0.5) == "0 participant(s) below 50% on catch trials: -"
    assert failing_text(["Pa", "Pb"], 0.25) == "2 participant(s) below 25% on catch trials: Pa, Pb"


def test_participants_table_leads_with_the_organisers_columns():
    frame = pd.DataFrame({"catch_total": [2], "participant": ["Pa"], "external_id": ["x"], "n_answered": [3],
                          "n_items": [8], "catch_accuracy": [0.5], "excluded": [False], "exclusion_reason": [None],
                          "completed_at": [None], "joined_at": ["2026-11-30T05:37:24+00:00"]})
    table = participants_table(frame)
    assert list(table.columns) == ["participant", "external id", "answered", "items", "catch accuracy", "excluded",
                                   "exclusion reason", "completed", "catch trials", "joined"]
    assert table.iloc[0].tolist() == ["Pa", "x", "3", "8", "50.0%", "no", "–", "–", "2", "2026-11-30 05:37 UTC"]


def test_study_from_form_strips_and_reads_empty_fields_as_none():
    config, folders, catch, practice = study_from_form(**{**FORM, "sets": " a \n\n  b/c\n", "catch_set": " k ",
                                                          "presentation_ms": 300, "completion_code": " C0DE "})
    assert (config.slug, config.title, config.presentation_ms, config.completion_code) == ("s2", "A title", 300,
                                                                                           "C0DE")
    assert (config.labels_per_item, config.items_per_participant, config.catch_per_participant) == (2, 6, 2)
    assert folders == ["a", "b/c"] and catch == "k" and practice is None
    config, folders, catch, _ = study_from_form(**FORM)
    assert config.presentation_ms is None and config.completion_code is None and config.redirect_url is None
    assert folders == [] and catch is None


def test_create_from_form_and_exclude_failing(tmp_path, study_sets):
    db = open_db(tmp_path / "s.db")
    try:
        sets = "\n".join(str(p) for p in study_sets["conditions"])
        config = create_from_form(db, **{**FORM, "sets": f"{sets}\n", "catch_set": f" {study_sets['catch']} "})
        study = get_study(db, "s2")
        assert config.slug == "s2" and [s.slug for s in list_studies(db)] == ["s2"]
        assert study.labels_per_item == 2 and study.presentation_ms is None
        uids = [enrol(db, study, f"ext{i}").uid for i in range(3)]
        exclude_failing(db, "s2", uids[:2], 0.5)
        frame = participants_frame(db, study).set_index("participant")
        assert frame.loc[uids, "excluded"].tolist() == [True, True, False]
        assert frame.loc[uids[0], "exclusion_reason"] == "catch accuracy below 0.50"
    finally:
        db.close()


def test_export_zip_and_csv_hold_every_table():
    frames = {"summary.csv": pd.DataFrame({"role": ["trial", "catch"], "condition": ["x", "é"]}),
              "items.csv": pd.DataFrame({"share_true": [0.5]})}
    assert csv_bytes(frames["summary.csv"]).decode("utf-8") == "role,condition\r\ntrial,x\r\ncatch,é\r\n"
    with zipfile.ZipFile(io.BytesIO(export_zip(frames))) as zf:
        assert zf.namelist() == ["summary.csv", "items.csv", "datapackage.json", "README.md"]
        for name, frame in frames.items():
            pd.testing.assert_frame_equal(pd.read_csv(zf.open(name)), frame)
        assert zf.read("items.csv").decode() == "share_true\r\n0.5000\r\n"  # fixed decimals


# ------------------------------------------------------------------------------------------------ simple mode
def test_trial_caption_counts_practice_and_main_items_apart():
    assert trial_caption(trial(2, practice=True)) == "Practice 2 of 3"
    assert trial_caption(trial(4, practice=False)) == "Image 1 of 12"
    assert trial_caption(trial(15, practice=False)) == "Image 12 of 12"


def test_answer_mode_and_elapsed_ms():
    assert answer_mode(types.SimpleNamespace(presentation_ms=200)) == "timed"
    assert answer_mode(types.SimpleNamespace(presentation_ms=None)) == "unlimited"
    assert elapsed_ms(10.0, 11.23456) == pytest.approx(1234.6)


def test_practice_feedback_and_its_message():
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    assert practice_feedback(trial(4, practice=False), 1, None) is None
    last = practice_feedback(trial(3, practice=True), 4, 4)
    assert last == {"assignment_id": 43, "label": 4, "answer": 4, "last": True}
    assert feedback_message(last, classes) == (True, "Correct: this is a **deer**.")
    wrong = practice_feedback(trial(1, practice=True), 2, 4)
    assert wrong["last"] is False
    assert feedback_message(wrong, classes) == (False, "Not quite: you chose bird, but this is a **deer**.")
