"""Participant page of the human study: consent, instructions, practice with feedback, then labeling.

Open with ?pid=<id>&study=<name> (or Prolific's ?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...).
Everything the participant has done lives in the database, so a reload resumes at the next image.
The database is $STUDY_DB (default study_data/study.db).
"""
from __future__ import annotations

import base64
import sys
import time
import types
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

# `streamlit run pages/study_label.py` puts only pages/ on sys.path; the study package is one level up.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from study import (  # noqa: E402
    FRONTEND_DIR,
    AnswerRejected,
    InvalidLink,
    StudyClosed,
    StudyDBError,
    StudyFull,
    StudyNotFound,
    consent,
    get_study,
    join,
    next_trial,
    open_db,
    parse_link,
    progress,
    record_answer,
)
from study.participant import get_participant, touch  # noqa: E402

# declare_component names the component after the calling module, found through sys.modules by file.
# Under app.py's st.navigation this page runs as an unregistered module, so register a stand-in for it.
_WIDGET_MODULE = "randmask_study_label"
if _WIDGET_MODULE not in sys.modules:
    sys.modules[_WIDGET_MODULE] = types.ModuleType(_WIDGET_MODULE)
sys.modules[_WIDGET_MODULE].__file__ = __file__
trial_widget = components.declare_component("study_trial", path=str(FRONTEND_DIR))


def stop_with(message: str, kind: str = "info") -> None:
    getattr(st, kind)(message)
    st.stop()


def finish_page(study) -> None:
    st.success("Thank you! You have finished the study.")
    st.write("Your completion code:")
    st.code(study.completion_code, language=None)
    if study.redirect_url:
        st.link_button("Return to the recruitment site", study.redirect_url, type="primary")
    st.stop()


def store(db, participant_id: int, trial, label: int, rt_ms, shown_ms, mode: str, input_kind: str) -> None:
    try:
        result = record_answer(db, participant_id, trial.assignment_id, label, rt_ms=rt_ms, shown_ms=shown_ms,
                               mode=mode, input=input_kind)
    except StudyClosed:
        stop_with("This study has been closed. Thank you for your time.")
    except AnswerRejected:
        # Never rerun here: a malformed widget value would come back on every rerun.
        st.warning("That answer could not be saved. Please answer with the buttons below.")
        return
    if trial.is_practice:
        st.session_state["feedback"] = {"assignment_id": trial.assignment_id, "label": result.label,
                                        "answer": result.practice_label,
                                        "last": trial.number == trial.practice_total}
    st.session_state.pop("shown_at", None)
    st.rerun()


def run_page(db) -> None:
    try:
        study = get_study(db, link.study)
    except StudyNotFound:
        stop_with("This study link is not valid (unknown or missing study).", "error")

    participant = get_participant(db, study, link.external_id)
    if participant is None:
        try:
            participant = join(db, study, link.external_id, external_study_id=link.external_study_id,
                               external_session_id=link.external_session_id)
        except StudyClosed:
            stop_with("This study is closed and takes no new participants. Thank you for your interest.")
    else:
        touch(db, participant.id)

    if participant.completed_at:
        finish_page(study)

    if participant.consent_at is None:
        st.subheader("Consent")
        st.write(study.consent_text)
        if st.button("I agree and want to take part", type="primary", key="consent"):
            try:
                consent(db, participant)
            except StudyFull:
                stop_with("This study has all the answers it needs. Thank you for your interest.")
            except StudyClosed:
                stop_with("This study is closed. Thank you for your interest.")
            st.rerun()
        st.stop()

    answered, total, practice_total = progress(db, participant.id)
    feedback = st.session_state.get("feedback")
    if feedback:
        st.subheader("Practice")
        names = study.classes
        if feedback["label"] == feedback["answer"]:
            st.success(f"Correct: this is a **{names[feedback['answer']]}**.")
        else:
            st.error(f"Not quite: you chose {names[feedback['label']]}, but this is a **{names[feedback['answer']]}**.")
        if feedback["last"]:
            st.info("That was the last practice image. The study starts now: there is no more feedback.")
        if st.button("Continue", type="primary", key=f"continue-{feedback['assignment_id']}"):
            del st.session_state["feedback"]
            st.rerun()
        st.stop()

    if answered == 0 and not st.session_state.get("instructions_read"):
        st.subheader("Instructions")
        st.write(study.instructions_text)
        if study.presentation_ms:
            st.write(f"Each image appears only briefly ({study.presentation_ms} ms) after a '+' sign; then a pattern of "
                     "coloured noise replaces it. Answer with your best guess.")
        if st.button("Start", type="primary", key="start"):
            st.session_state["instructions_read"] = True
            st.rerun()
        st.stop()

    trial = next_trial(db, participant.id)
    if trial is None:  # the last answer also marks the participant completed, in the same transaction
        finish_page(study)

    if trial.is_practice:
        st.caption(f"Practice {trial.number} of {trial.practice_total}")
        st.progress((trial.number - 1) / max(trial.practice_total, 1))
    else:
        main_total = trial.total - trial.practice_total
        done = trial.number - 1 - trial.practice_total
        st.caption(f"Image {done + 1} of {main_total}")
        st.progress(done / max(main_total, 1))

    mode = "timed" if study.presentation_ms else "unlimited"
    shown_at = st.session_state.setdefault("shown_at", {}).setdefault(trial.assignment_id, time.monotonic())
    value = trial_widget(png_b64=base64.b64encode(trial.png).decode("ascii"), classes=list(study.classes),
                         presentation_ms=study.presentation_ms, assignment_id=trial.assignment_id,
                         key=f"trial-{trial.assignment_id}", default=None)
    if isinstance(value, dict) and value.get("assignment_id") == trial.assignment_id:
        input_kind = value.get("input") if value.get("input") in ("keyboard", "click") else "click"
        store(db, participant.id, trial, value.get("label"), value.get("rt_ms"), value.get("shown_ms"), mode, input_kind)

    with st.expander("Buttons or keys not working? Answer here"):
        columns = st.columns(5)
        for label, name in enumerate(study.classes):
            if columns[label % 5].button(f"{label} {name}", key=f"fallback-{trial.assignment_id}-{label}",
                                         width="stretch"):
                rt_ms = round((time.monotonic() - shown_at) * 1000, 1)
                store(db, participant.id, trial, label, rt_ms, None, mode, "button")


st.title("Image labeling study")
try:
    link = parse_link(st.query_params.to_dict())
except InvalidLink as e:
    stop_with(f"This link does not work: {e}. Please use the exact link you were given.", "error")
try:
    db = open_db(create=False)
except StudyDBError:
    stop_with("The study is not available right now. Please try again later.", "error")
try:
    run_page(db)
finally:
    db.close()
