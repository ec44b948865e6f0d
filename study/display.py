"""Study tables as the organiser page shows them: readable headers, percentages, times in UTC, and a dash
where a value is missing (never 'None' or 'nan'). The CSV exports keep the raw columns; this is display only."""
from __future__ import annotations

import base64
import math
import re

import pandas as pd

from .admin import Overview

MISSING = "–"
HEADERS = {
    "participant": "participant", "external_id": "external id", "external_study_id": "Prolific study",
    "external_session_id": "Prolific session", "joined_at": "joined", "consent_at": "consented",
    "completed_at": "completed", "last_seen_at": "last seen", "excluded": "excluded",
    "exclusion_reason": "exclusion reason", "n_items": "items", "n_answered": "answered",
    "catch_total": "catch trials", "catch_correct": "catch correct", "catch_answered": "catch answered",
    "practice_correct": "practice correct", "practice_total": "practice trials", "catch_accuracy": "catch accuracy",
    "min_labels": "fewest labels", "max_labels": "most labels", "labels_done": "labels done",
    "labels_needed": "labels needed", "n_items_labelled": "items labelled", "n_answers": "answers",
    "n_participants": "participants", "human_accuracy": "human accuracy",
    "share_source_pred": "share choosing the source's label", "majority_accuracy": "majority accuracy",
    "fleiss_kappa": "Fleiss' kappa", "krippendorff_alpha": "Krippendorff's alpha", "median_rt_ms": "median RT (ms)",
}
PARTICIPANT_COLUMNS = ["participant", "external_id", "n_answered", "n_items", "catch_accuracy", "excluded",
                       "exclusion_reason", "completed_at"]  # the organiser's table opens with these
PERCENT = re.compile(r"(accuracy|share)")  # fractions shown as percentages
TIME = re.compile(r"_at$")
ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)")


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def header(column: str) -> str:
    """'catch_accuracy' -> 'catch accuracy'; known columns get their full name."""
    return HEADERS.get(column, column.replace("_", " "))


def cell(column: str, value: object) -> str:
    """One value as text for the column it sits in."""
    if _missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if TIME.search(column):
        match = ISO_TIME.match(str(value))
        return f"{match[1]} {match[2]} UTC" if match else str(value)
    if isinstance(value, float) and PERCENT.search(column):
        return f"{100 * value:.1f}%"
    if column == "median_rt_ms":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and column.startswith("n_") else f"{value:.2f}"
    return str(value)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as text with readable headers; a `<x>_lo`/`<x>_hi` pair becomes one '<x> 95% CI' column."""
    columns: dict[str, list[str]] = {}
    for column in frame.columns:
        if column.endswith(("_lo", "_hi")) and column[:-3] in frame.columns:
            if column.endswith("_lo") and f"{column[:-3]}_hi" in frame.columns:
                base = column[:-3]
                columns[f"{header(base)} 95% CI"] = [
                    MISSING if _missing(lo) or _missing(hi) else f"{cell(base, lo)}–{cell(base, hi)}"
                    for lo, hi in zip(frame[column], frame[f"{base}_hi"], strict=True)]
            continue
        columns[header(column)] = [cell(column, v) for v in frame[column].astype(object)]
    return pd.DataFrame(columns, index=range(len(frame)))


def participants_table(frame: pd.DataFrame) -> pd.DataFrame:
    """export.participants_frame as the organiser's table: PARTICIPANT_COLUMNS first, then the rest, readable."""
    rest = [c for c in frame.columns if c not in PARTICIPANT_COLUMNS]
    return readable(frame[PARTICIPANT_COLUMNS + rest])


def progress_bar(overview: Overview, labels_per_item: int | None = None) -> tuple[float, str]:
    """(share of labels done, capped at 1; 'n of m labels', with ' (k per item)' when given) for st.progress."""
    text = f"{overview.labels_done} of {overview.labels_needed} labels"
    if labels_per_item is not None:
        text += f" ({labels_per_item} per item)"
    return min(overview.fraction_done, 1.0), text


def counts_text(overview: Overview) -> str:
    """The participant counts in one line."""
    return (f"Participants {overview.participants}, consented {overview.consented}, completed {overview.completed}, "
            f"excluded {overview.excluded}")


def retry_text(wait_s: float) -> str:
    """How long a locked-out organiser waits, in whole seconds, never '0 s': '3 s'."""
    return f"{int(wait_s) + 1} s"


def failing_text(failing: list[str], threshold: float) -> str:
    """'2 participant(s) below 50% on catch trials: a, b' ('-' for none)."""
    return f"{len(failing)} participant(s) below {threshold:.0%} on catch trials: {', '.join(failing) or '-'}"


def exclude_label(count: int) -> str:
    """The button that excludes the participants below the catch threshold: 'Exclude this participant',
    'Exclude these 3 participants'."""
    return "Exclude this participant" if count == 1 else f"Exclude these {count} participants"


STIMULUS_PX = 192  # the main widget's stage (study/frontend/index.html): 6 screen pixels per CIFAR pixel


def stimulus_html(png: bytes, size: int = STIMULUS_PX) -> str:
    """The simple version's image as the widget shows it: the stored PNG itself (no re-encoding), `size` CSS
    pixels square, centred, scaled by nearest neighbour (image-rendering: pixelated). Streamlit's own st.image
    scales smoothly and sits left: participants on the fallback saw blurred adversarial noise."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<div style="display:flex;justify-content:center;margin:8px 0">'
            f'<img alt="image to label" src="data:image/png;base64,{data}" width="{size}" height="{size}" '
            f'style="width:{size}px;height:{size}px;image-rendering:pixelated"></div>')
