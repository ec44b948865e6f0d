"""Participant page of the human study: consent, instructions, practice with feedback, then labeling.

Served by `python -m study serve` (the participant server; also reachable through app.py for the lab).
Open with the study's link: ?study=<name>&key=<link key>&pid=<id> (or Prolific's PROLIFIC_PID, STUDY_ID,
SESSION_ID). Everything the participant has done lives in the database, so a reload resumes at the next image.
The trial widget holds the next images ahead and stores answers through a fragment, so an answer reruns only
that fragment; each run borrows a connection from the server's shared pool. The database is $STUDY_DB.
"""
from __future__ import annotations

import secrets
import sys
import threading
import time
import types

import streamlit as st
import streamlit.components.v1 as components

from study import (
    FRONTEND_DIR,
    AnswerRejected,
    InvalidLink,
    StudyBusy,
    StudyClosed,
    StudyDBError,
    StudyFull,
    StudyNotFound,
    enrol,
    get_study,
    key_matches,
    next_trial,
    parse_link,
    progress,
    record_answer,
    resume,
)
from study.display import stimulus_html
from study.errors import REFUSALS, configure_logging
from study.participant import get_participant, record_servings
from study.pool import shared_pool
from study.session import (
    answer_mode,
    apply_answers,
    elapsed_ms,
    feedback_message,
    practice_feedback,
    trial_caption,
    widget_args,
)
from study.validate import READ_KEYS

# declare_component names the component after the calling module, found by inspect.getmodule, whose file-to-module
# cache fills without a lock: two sessions starting at once could get "module is None" (a participant's traceback).
# This page runs as an unregistered module (st.navigation, or the participant server's exec), so a stand-in module
# carries its name, and a lock kept on that module (one per process) lets one session declare at a time.
_widget_home = sys.modules.setdefault("randmask_study_label", types.ModuleType("randmask_study_label"))
with _widget_home.__dict__.setdefault("declare_lock", threading.Lock()):
    _widget_home.__file__ = __file__
    trial_widget = components.declare_component("study_trial", path=str(FRONTEND_DIR))
configure_logging()

ASK_AGAIN = "Please use the exact link you were given."


def stop_with(message: str, kind: str = "info") -> None:
    getattr(st, kind)(message)
    st.stop()


def fail(message: str, kind: str, detail: str = "", *, ours: bool = False) -> None:
    """A participant-facing refusal (or, `ours`, a failure of ours): a short message and an error id; the kind and
    detail go to the server log only, once per kind and minute with a count (a script reloading a bad link over
    and over grows the log by nothing). The detail holds no key and no participant id."""
    eid = REFUSALS.failed(kind, detail) if ours else REFUSALS.refusal_id(kind, detail)
    stop_with(f"{message} (error id {eid})", "error")


def page_id() -> str:
    """This page's id for the servings record: one per browser session, so a reload (or a server restart) is a
    new page, and a trial sent to an earlier page is marked in the export (`earlier_servings`)."""
    return st.session_state.setdefault("page_id", secrets.token_hex(8))


def served_here() -> set[int]:
    """The trials this page has been sent (and recorded as served)."""
    return st.session_state.setdefault("served", set())


def borrowed_db():
    """A connection borrowed from the server's shared pool for one script or fragment run and given back at its
    end (st.stop and st.rerun included): a session holds none between runs."""
    return shared_pool().connection()


def finish_page(study) -> None:
    st.success("Thank you! You have finished the study.")
    st.write("Your completion code:")
    st.code(study.completion_code, language=None)
    if study.redirect_url:
        st.link_button("Return to the recruitment site", study.redirect_url, type="primary")
    st.stop()


def timed_out_page(study) -> None:
    stop_with(f"This session timed out: no answer came for {study.abandon_after_min:g} minutes, so your remaining "
              "images went to other participants. The answers you gave are saved. Thank you for your time; please "
              "contact the researcher through the recruitment site.", "warning")


def enrol_or_stop(db, study, link) -> None:
    try:
        enrol(db, study, link.external_id, external_study_id=link.external_study_id,
              external_session_id=link.external_session_id)
    except StudyBusy:
        stop_with("All places in this study are taken right now. Please try again in a few minutes.")
    except StudyFull:
        stop_with("This study has all the answers it needs. Thank you for your interest.")
    except StudyClosed:
        stop_with("This study is closed. Thank you for your interest.")


# ------------------------------------------------------------------------------------------------ widget mode
@st.fragment
def trial_area(study, participant_id: int) -> None:
    """Only this reruns when the widget sends answers: store them, then hand it the next window."""
    try:
        with borrowed_db() as db:
            handled: set[int] = st.session_state.setdefault("handled", set())
            outcome = apply_answers(db, study, participant_id, st.session_state.get("trials"), handled)
            args = widget_args(db, study, participant_id, outcome, page=page_id(), served=served_here())
    except Exception as e:  # a fragment rerun does not pass through the page's own safety net
        eid = REFUSALS.failed("trial fragment failures", f"{type(e).__name__}: {e}", exc_info=True)
        stop_with(f"Something went wrong on our side. Please reload the page in a minute. (error id {eid})", "error")
    if outcome.completed or outcome.closed or outcome.timed_out:
        st.rerun(scope="app")  # the page itself changes: completion code, closed or timed-out message
    trial_widget(key="trials", default=None, **args)


# ------------------------------------------------------------------------------------------------ simple mode
def store(db, participant_id: int, trial, label: int, rt_ms, mode: str) -> None:
    try:
        result = record_answer(db, participant_id, trial.assignment_id, label, rt_ms=rt_ms, shown_ms=None, mode=mode,
                               input="button")
    except StudyClosed:
        stop_with("This study has been closed. Thank you for your time.")
    except AnswerRejected as e:
        REFUSALS.refused("simple-mode answers rejected", str(e))
        st.warning("That answer could not be saved. Please answer again.")
        return
    if result.timed_out:
        st.rerun()
    feedback = practice_feedback(trial, result.label, result.practice_label)
    if feedback is not None:
        st.session_state["feedback"] = feedback
    st.session_state.pop("shown_at", None)
    st.rerun()


def simple_trial(db, study, participant_id: int) -> None:
    """Plain Streamlit image and buttons (no custom widget): slower, for browsers where the widget fails."""
    feedback = st.session_state.get("feedback")
    if feedback:
        st.subheader("Practice")
        correct, message = feedback_message(feedback, study.classes)
        if correct:
            st.success(message)
        else:
            st.error(message)
        if feedback["last"]:
            st.info("That was the last practice image. The study starts now: there is no more feedback.")
        if st.button("Continue", type="primary", key=f"continue-{feedback['assignment_id']}"):
            del st.session_state["feedback"]
            st.rerun()
        st.stop()
    trial = next_trial(db, participant_id)
    if trial is None:
        st.rerun()
    if trial.assignment_id not in served_here():  # recorded before it is shown
        record_servings(db, participant_id, page_id(), [trial.assignment_id])
        served_here().add(trial.assignment_id)
    st.caption(trial_caption(trial))
    shown_at = st.session_state.setdefault("shown_at", {}).setdefault(trial.assignment_id, time.monotonic())
    st.html(stimulus_html(trial.png))  # the widget's size and pixels
    columns = st.columns(5)
    for label, name in enumerate(study.classes):
        if columns[label % 5].button(f"{label} {name}", key=f"fallback-{trial.assignment_id}-{label}", width="stretch"):
            store(db, participant_id, trial, label, elapsed_ms(shown_at, time.monotonic()), answer_mode(study))


# ------------------------------------------------------------------------------------------------ page
def run_page() -> None:
    params = {k: st.query_params.get_all(k) for k in READ_KEYS}
    try:
        link = parse_link(params)
    except InvalidLink as e:
        fail(f"This link does not work: {e}. {ASK_AGAIN}", "links that do not parse", str(e))
    try:
        with borrowed_db() as db:
            labeling_flow(db, link)
    except StudyDBError as e:
        fail("The study is not available right now. Please try again later.", "pages without the database", str(e),
             ours=True)


def labeling_flow(db, link) -> None:
    try:
        study = get_study(db, link.study)
    except StudyNotFound as e:
        fail(f"This study link is not valid. {ASK_AGAIN}", "links naming no study", str(e))
    if not key_matches(link.key, study.link_key):  # nothing is stored for a link without the right key
        fail(f"This study link is not valid (its key is missing or wrong). {ASK_AGAIN}",
             "links without the study's key", f"key {'missing' if link.key is None else 'wrong'} for study {study.slug}")

    participant = get_participant(db, study, link.external_id)
    if (participant is None or participant.consent_at is None) and study.status != "open":
        stop_with("This study is closed and takes no new participants. Thank you for your interest.")
    if participant is None or participant.consent_at is None:
        st.header(study.title, anchor=False)  # the organiser's title (not during the trials: room for the image)
        st.subheader("Consent")
        st.write(study.consent_text)
        if st.button("I agree and want to take part", type="primary", key="consent"):
            enrol_or_stop(db, study, link)
            st.rerun()
        st.stop()

    st.session_state["_consented"] = True  # the participant server's guard no longer counts this session as idle
    participant = resume(db, study, participant)
    if participant.completed_at:
        finish_page(study)
    if participant.timed_out_at:
        timed_out_page(study)
    if study.status != "open":
        stop_with("This study has been closed. Thank you for your time.")

    answered, total, _ = progress(db, participant.id)
    if answered == total:  # completed in another tab a moment ago
        finish_page(study)
    if answered == 0 and not st.session_state.get("instructions_read"):
        st.header(study.title, anchor=False)
        st.subheader("Instructions")
        st.write(study.instructions_text)
        if study.presentation_ms:
            st.write(f"Each image appears only briefly ({study.presentation_ms} ms) after a '+' sign; then a pattern of "
                     "coloured noise replaces it. Answer with your best guess.")
        if st.button("Start", type="primary", key="start"):
            st.session_state["instructions_read"] = True
            st.rerun()
        st.stop()

    if st.session_state.get("simple"):
        simple_trial(db, study, participant.id)
    else:
        trial_area(study, participant.id)
        if st.button("Image or buttons not working? Use the simple version", key="simple-mode", type="tertiary"):
            st.session_state["simple"] = True
            st.rerun()


st.title("Image labeling study")
try:
    run_page()
except Exception as e:  # st.stop/st.rerun are BaseExceptions and pass; anything else is our fault
    eid = REFUSALS.failed("participant page failures", f"{type(e).__name__}: {e}", exc_info=True)
    st.error(f"Something went wrong on our side. Please reload the page in a minute. (error id {eid})")
