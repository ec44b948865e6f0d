"""Checks for everything that arrives in a participant's URL, and the links we hand out.

Only the parameters below are ever read; each must be short, use a small character set, match as a
whole string (`re.fullmatch`: a pattern ending in `$` would let a trailing newline through) and appear
once. Unknown parameters (recruitment platforms add their own) are ignored, never used.
"""
from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
BASE_URL_RE = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]{0,200})?")
RULES = {ID_RE: "letters, digits, '-' and '_'; 1 to 64 characters",
         SLUG_RE: "lower-case letters, digits and '-'; 1 to 40 characters, not starting with '-'",
         KEY_RE: "letters, digits, '-' and '_'; 16 to 64 characters"}
PARTICIPANT_KEYS = ("PROLIFIC_PID", "pid")  # first present wins; both must agree if both are given
READ_KEYS = (*PARTICIPANT_KEYS, "study", "key", "STUDY_ID", "SESSION_ID")
# Prolific replaces these in a study URL with the participant's, study's and session's ids.
PROLIFIC_PLACEHOLDERS = {"PROLIFIC_PID": "{{%PROLIFIC_PID%}}", "STUDY_ID": "{{%STUDY_ID%}}",
                         "SESSION_ID": "{{%SESSION_ID%}}"}


class InvalidLink(ValueError):
    """A URL parameter is missing or not acceptable; the message is safe to show to the participant."""


@dataclass(frozen=True)
class LinkParams:
    external_id: str
    study: str | None
    external_study_id: str | None
    external_session_id: str | None
    key: str | None = None


def _one(params: Mapping, key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, list | tuple):  # parse_qs / st.query_params.get_all style
        if not value:
            return None
        if len(value) != 1:
            raise InvalidLink(f"parameter {key} is given {len(value)} times")
        value = value[0]
    if not isinstance(value, str):
        raise InvalidLink(f"parameter {key} is not text")
    return value


def _checked(params: Mapping, key: str, pattern: re.Pattern, what: str) -> str | None:
    value = _one(params, key)
    if value is None:
        return None
    if not pattern.fullmatch(value):
        raise InvalidLink(f"parameter {key} is not a valid {what} ({RULES[pattern]})")
    return value


def parse_link(params: Mapping) -> LinkParams:
    """Validate the participant link: `pid` or `PROLIFIC_PID` (required), `study` (our study name), `key`
    (the study's link key), `STUDY_ID` and `SESSION_ID` (recorded as given by Prolific). Give each
    parameter as a list of all its values (a parameter given twice is refused) or as one string."""
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
        key=_checked(params, "key", KEY_RE, "link key"),
    )


def key_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time check of a link's key against the study's."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def has_participant_link(params: Mapping) -> bool:
    """True when the URL addresses a participant (app.py then shows only the labeling page)."""
    return any(params.get(k) for k in PARTICIPANT_KEYS)


def check_base_url(base_url: str) -> str:
    """The participant server's public address (`https://host[:port][/path]`), without a trailing '/'."""
    if not isinstance(base_url, str) or not BASE_URL_RE.fullmatch(base_url):
        raise ValueError(f"base URL {base_url!r}: use http(s)://host[:port][/path] with no query, spaces or line breaks")
    return base_url.rstrip("/")


def participant_link(base_url: str, slug: str, link_key: str, *, prolific: bool = True, pid: str | None = None) -> str:
    """The link participants open. With `prolific`, Prolific's placeholders fill in the ids; else `pid`
    (or a `<participant id>` marker for the organiser to replace)."""
    base = check_base_url(base_url)
    query = urlencode({"study": slug, "key": link_key})
    if prolific:
        ids = "&".join(f"{k}={v}" for k, v in PROLIFIC_PLACEHOLDERS.items())
    else:
        ids = f"pid={pid}" if pid is not None else "pid=<participant id>"
    return f"{base}/?{query}&{ids}"
