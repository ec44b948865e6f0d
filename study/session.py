"""The trial widget's protocol, kept apart from Streamlit so it can be tested on its own.

The widget (frontend/index.html) holds a window of the participant's next trials, so after an answer the
next image is on screen at once, without waiting for the server. It sends every answer it has not seen
acknowledged, as one list, each time it sends: `{"seq": n, "answers": [{assignment_id, label, rt_ms,
shown_ms, input}, ...]}`. The server stores them in order (`record_answer` is idempotent, so a resent
answer is never counted twice), then renders the widget again with the ids it has handled and the next
window. A lost round trip is simply resent by the widget.

The simple mode (plain Streamlit image and buttons, for browsers where the widget fails) shares the answer
mode and gets its captions, reaction times and practice feedback here too.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import sqlite_utils

from .allocation import StudyClosed
from .design import Study
from .errors import REFUSALS
from .participant import AnswerRejected, Trial, record_answer, record_servings, trial_window

WINDOW = 3  # trials the widget holds: the one on screen and two ahead
MAX_ANSWERS_PER_MESSAGE = 50
WIDGET_INPUTS = ("keyboard", "click")


@dataclass
class Outcome:
    handled: list[int] = field(default_factory=list)  # ids stored now or before: the widget drops them
    rejected: list[int] = field(default_factory=list)  # ids the widget must ask again (bad value, out of order)
    completed: bool = False
    closed: bool = False
    timed_out: bool = False


def _answers(value: object) -> list[dict]:
    if not isinstance(value, dict):
        return []
    answers = value.get("answers")
    if not isinstance(answers, list):
        return []
    return [a for a in answers[:MAX_ANSWERS_PER_MESSAGE] if isinstance(a, dict)]


def apply_answers(db: sqlite_utils.Database, study: Study, participant_id: int, value: object,
                  already: set[int] | None = None) -> Outcome:
    """Store the answers in a widget value, in order. `already`: ids this session knows are stored
    (skipped without a database round trip; the caller keeps it up to date from `handled`)."""
    out = Outcome()
    already = already if already is not None else set()
    mode = answer_mode(study)
    for answer in _answers(value):
        assignment_id = answer.get("assignment_id")
        if not isinstance(assignment_id, int) or isinstance(assignment_id, bool):
            continue
        if assignment_id in already:
            out.handled.append(assignment_id)
            continue
        input_kind = answer.get("input") if answer.get("input") in WIDGET_INPUTS else "click"
        try:
            result = record_answer(db, participant_id, assignment_id, answer.get("label"), rt_ms=answer.get("rt_ms"),
                                   shown_ms=answer.get("shown_ms"), mode=mode, input=input_kind)
        except AnswerRejected as e:
            REFUSALS.refused("widget answers rejected", str(e))  # a page resending it would log once per rerun
            out.rejected.append(assignment_id)
            break  # later answers depend on this one (answers are stored in order)
        except StudyClosed:
            out.closed = True
            break
        if result.timed_out:
            out.timed_out = True
            break
        out.handled.append(assignment_id)
        already.add(assignment_id)
        out.completed = out.completed or result.completed
    return out


def answer_mode(study: Study) -> str:
    """How answers are recorded: 'timed' when images show only briefly, else 'unlimited'."""
    return "timed" if study.presentation_ms else "unlimited"


# ------------------------------------------------------------------------------------------------ simple mode
def trial_caption(trial: Trial) -> str:
    """'Practice 1 of 3', or 'Image 4 of 12' counted over the main items only."""
    if trial.is_practice:
        return f"Practice {trial.number} of {trial.practice_total}"
    return f"Image {trial.number - trial.practice_total} of {trial.total - trial.practice_total}"


def elapsed_ms(shown_at: float, now: float) -> float:
    """Reaction time in milliseconds (0.1 ms) between two time.monotonic() readings."""
    return round((now - shown_at) * 1000, 1)


def practice_feedback(trial: Trial, label: int, answer: int | None) -> dict | None:
    """What the simple mode remembers to give feedback on a practice answer (None for a main item): the
    assignment, the label on record, the right answer, and whether it was the last practice item."""
    if not trial.is_practice:
        return None
    return {"assignment_id": trial.assignment_id, "label": label, "answer": answer,
            "last": trial.number == trial.practice_total}


def feedback_message(feedback: dict, classes: list[str]) -> tuple[bool, str]:
    """(correct, the sentence that says so) for practice_feedback's record."""
    right = classes[feedback["answer"]]
    if feedback["label"] == feedback["answer"]:
        return True, f"Correct: this is a **{right}**."
    return False, f"Not quite: you chose {classes[feedback['label']]}, but this is a **{right}**."


def trial_payload(trial: Trial) -> dict:
    return {"id": trial.assignment_id, "n": trial.number, "practice": trial.is_practice,
            "answer": trial.practice_label, "png": base64.b64encode(trial.png).decode("ascii")}


def widget_args(db: sqlite_utils.Database, study: Study, participant_id: int, outcome: Outcome | None = None,
                window: int = WINDOW, page: str | None = None, served: set[int] | None = None) -> dict:
    """What the widget is rendered with: the next `window` unanswered trials and the ids just handled. With
    `page`, the trials this page has not been sent yet (`served`: the ids it has, kept up to date here) are
    recorded as served to it first (`record_servings`): about one row and one small write per answer."""
    trials = trial_window(db, participant_id, window)
    if page is not None:
        served = served if served is not None else set()
        new = [t.assignment_id for t in trials if t.assignment_id not in served]
        record_servings(db, participant_id, page, new)
        served.update(new)
    total = trials[0].total if trials else 0
    practice_total = trials[0].practice_total if trials else 0
    return {"classes": list(study.classes), "presentation_ms": study.presentation_ms,
            "total": total, "practice_total": practice_total, "trials": [trial_payload(t) for t in trials],
            "handled": outcome.handled if outcome else [], "rejected": outcome.rejected if outcome else []}
