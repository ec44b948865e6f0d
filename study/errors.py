"""Error ids: a participant sees a short message with an id; the details go to the server log under that id."""
from __future__ import annotations

import logging
import os
import secrets

log = logging.getLogger("study")


def error_id() -> str:
    """A short random id to quote in a message and find in the server log (e.g. 'E-3F9A2C1B')."""
    return "E-" + secrets.token_hex(4).upper()


def report(message: str, *, exc_info: bool = False) -> str:
    """Log `message` (never shown to the participant) under a new error id and return the id."""
    eid = error_id()
    log.error("%s %s", eid, message, exc_info=exc_info)
    return eid


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
