"""randmask human study: do adversarial images made against Random-Mask networks fool people too?

SQLite-backed design, assignment, answer recording and exports. No Streamlit import here: the pages
in pages/study_*.py only lay these functions out.
"""
from pathlib import Path

from .db import SCHEMA_VERSION, StudyDBError, default_db_path, open_db
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
    StudyClosed,
    StudyFull,
    Trial,
    consent,
    join,
    next_trial,
    progress,
    record_answer,
)
from .validate import InvalidLink, has_participant_link, parse_link

FRONTEND_DIR = Path(__file__).parent / "frontend"

__all__ = [
    "FRONTEND_DIR", "SCHEMA_VERSION", "AnswerRejected", "DesignError", "InvalidLink", "Study", "StudyClosed",
    "StudyConfig", "StudyDBError", "StudyFull", "StudyNotFound", "Trial", "consent", "create_study",
    "default_db_path", "get_study", "has_participant_link", "join", "list_studies", "next_trial", "open_db",
    "parse_link", "progress", "record_answer", "set_status",
]
