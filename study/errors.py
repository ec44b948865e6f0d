"""Error ids and the server's log. A participant sees a short message with an id; the details go to the server log
under that id. Whatever a visitor can cause over and over (a refusal, a dropped message, a failure) is logged
through REFUSALS: once per kind and interval, with a count, never once per hit, so no script can grow the log."""
from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("study")

DETAIL_MAX = 200  # characters of a detail logged: a visitor's value (a 1 MB label) must not become a 1 MB line
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")  # a newline in a detail would forge a log line


def error_id() -> str:
    """A short random id to quote in a message and find in the server log (e.g. 'E-3F9A2C1B')."""
    return "E-" + secrets.token_hex(4).upper()


def report(message: str, *, exc_info: bool = False) -> str:
    """Log `message` (never shown to the participant) under a new error id and return the id. For what happens
    once (a command's note); anything a visitor can repeat goes through REFUSALS."""
    eid = error_id()
    log.error("%s %s", eid, message, exc_info=exc_info)
    return eid


def clean_detail(detail: str) -> str:
    """One short printable line."""
    detail = _UNPRINTABLE.sub("?", detail)
    return detail if len(detail) <= DETAIL_MAX else detail[:DETAIL_MAX - 3] + "..."


@dataclass
class _Kind:
    last: float = -float("inf")  # when its last line was written
    held: int = 0  # hits since that line
    eid: str = field(default_factory=error_id)  # the id of its next line, shown for the hits held back meanwhile
    detail: str = ""  # the latest held-back hit's
    verb: str = "refused "
    level: int = logging.WARNING


class RefusalLog:
    """Log each kind of refusal (or failure) at most once per `interval_s`, with how many there were since its last
    line. Every hit gets an error id that appears in the one line counting it: the line written at once, or, for
    a hit held back, the kind's next line (written by the next hit after the interval, or by `flush`). Kinds are
    fixed phrases of the code; details are cut to one short printable line and must hold no secret (no key,
    password or participant id from a link)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._lock = threading.Lock()
        self._kinds: dict[str, _Kind] = {}

    def refused(self, kind: str, detail: str = "") -> bool:
        """Count one refusal (logged as a warning); True when this call wrote the log line."""
        return self._hit(kind, detail, "refused ", logging.WARNING, False)[1]

    def refusal_id(self, kind: str, detail: str = "") -> str:
        """Count one refusal; the error id to show the visitor."""
        return self._hit(kind, detail, "refused ", logging.WARNING, False)[0]

    def failed(self, kind: str, detail: str = "", *, exc_info: bool = False) -> str:
        """Count one failure of ours (logged as an error, with the traceback of the first one per interval); the
        error id to show the participant."""
        return self._hit(kind, detail, "", logging.ERROR, exc_info)[0]

    def _hit(self, kind: str, detail: str, verb: str, level: int, exc_info: bool) -> tuple[str, bool]:
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                state = self._kinds[kind] = _Kind(verb=verb, level=level)
            state.held += 1
            eid = state.eid
            if now - state.last < self.interval_s:
                state.detail = detail
                return eid, False
            count, state.held, state.last, state.eid, state.detail = state.held, 0, now, error_id(), ""
        self._write(eid, verb, count, kind, detail, level, exc_info)
        return eid, True

    def flush(self) -> int:
        """Write the counts held back for kinds whose interval has passed (a burst that stopped); the lines written.
        The participant server's sweep calls it every few seconds."""
        now = self._clock()
        due = []
        with self._lock:
            for kind, state in self._kinds.items():
                if state.held and now - state.last >= self.interval_s:
                    due.append((state.eid, state.verb, state.held, kind, state.detail, state.level))
                    state.held, state.last, state.eid, state.detail = 0, now, error_id(), ""
        for eid, verb, count, kind, detail, level in due:
            self._write(eid, verb, count, kind, detail, level, False)
        return len(due)

    def _write(self, eid: str, verb: str, count: int, kind: str, detail: str, level: int, exc_info: bool) -> None:
        detail = clean_detail(detail)
        log.log(level, "%s %s%d x %s in the last %.0f s%s", eid, verb, count, kind, self.interval_s,
                f" ({detail})" if detail else "", exc_info=exc_info)


REFUSALS = RefusalLog()  # the process's one: every refusal, drop and participant-facing failure goes through it


def configure_logging() -> None:
    """Send the study's log lines (with their error ids) to the server's stderr, once per process. A worker of
    `serve --workers N` names itself (`study[worker 2]`): the workers share one log."""
    if not log.handlers:
        handler = logging.StreamHandler()
        slot = os.environ.get("STUDY_WORKER", "")  # study.workers.WORKER_ENV, set by the supervisor
        name = f"%(name)s[worker {int(slot) + 1}]" if slot.isdigit() else "%(name)s"
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
