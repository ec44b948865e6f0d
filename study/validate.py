"""Checks for everything that arrives in a participant's URL.

Only the parameters below are ever read; each must be short and use a small character set.
Unknown parameters (recruitment platforms add their own) are ignored, never used.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
PARTICIPANT_KEYS = ("PROLIFIC_PID", "pid")  # first present wins; both must agree if both are given


class InvalidLink(ValueError):
    """A URL parameter is missing or not acceptable; the message is safe to show to the participant."""


@dataclass(frozen=True)
class LinkParams:
    external_id: str
    study: str | None
    external_study_id: str | None
    external_session_id: str | None


def _one(params: Mapping, key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, list | tuple):  # parse_qs style
        if len(value) != 1:
            raise InvalidLink(f"parameter {key} given {len(value)} times")
        value = value[0]
    if not isinstance(value, str):
        raise InvalidLink(f"parameter {key} is not text")
    return value


def _checked(params: Mapping, key: str, pattern: re.Pattern, what: str) -> str | None:
    value = _one(params, key)
    if value is None:
        return None
    if not pattern.match(value):
        raise InvalidLink(f"parameter {key} is not a valid {what} (allowed: letters, digits, '-', '_'; at most 64 characters)")
    return value


def parse_link(params: Mapping) -> LinkParams:
    """Validate the participant link: `pid` or `PROLIFIC_PID` (required), `study` (our study name),
    `STUDY_ID` and `SESSION_ID` (recorded as given by Prolific)."""
    ids = {k: _checked(params, k, ID_RE, "participant id") for k in PARTICIPANT_KEYS}
    given = {v for v in ids.values() if v is not None}
    if not given:
        raise InvalidLink("this link has no participant id (pid=... or PROLIFIC_PID=...)")
    if len(given) > 1:
        raise InvalidLink("the link gives two different participant ids")
    return LinkParams(
        external_id=given.pop(),
        study=_checked(params, "study", SLUG_RE, "study name"),
        external_study_id=_checked(params, "STUDY_ID", ID_RE, "study id"),
        external_session_id=_checked(params, "SESSION_ID", ID_RE, "session id"),
    )


def has_participant_link(params: Mapping) -> bool:
    """True when the URL addresses a participant (app.py then shows only the labeling page)."""
    return any(params.get(k) for k in PARTICIPANT_KEYS)
