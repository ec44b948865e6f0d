"""randmask human study: do adversarial images made against Random-Mask networks fool people too?

SQLite-backed design, assignment, answer recording and exports. No Streamlit import here: the pages
in pages/study_*.py only lay these functions out.
"""
from pathlib import Path

from .allocation import StudyBusy, StudyClosed, StudyFull
from .db import StudyDBError, default_db_path, open_db
from .design import (
    DesignError,
    Study,
    StudyConfig,
    StudyNotFound,
    create_study,
    get_study,
    list_studies,
    set_status,
)
from .participant import (
    AnswerRejected,
    Trial,
    consent,
    enrol,
    join,
    next_trial,
    progress,
    record_answer,
    resume,
    trial_window,
)
from .schema import SCHEMA_VERSION
from .validate import InvalidLink, has_participant_link, key_matches, parse_link, participant_link

FRONTEND_DIR = Path(__file__).parent / "frontend"

__all__ = [
    "FRONTEND_DIR", "SCHEMA_VERSION", "AnswerRejected", "DesignError", "InvalidLink", "Study", "StudyClosed",
    "StudyBusy", "StudyConfig", "StudyDBError", "StudyFull", "StudyNotFound", "Trial", "consent", "create_study",
    "default_db_path", "enrol", "get_study", "has_participant_link", "join", "key_matches", "list_studies",
    "next_trial", "open_db", "parse_link", "participant_link", "progress", "record_answer", "resume", "set_status",
    "trial_window",
]
