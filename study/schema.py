"""What a study database file is: the mark in its header, its tables and indexes as a list of migrations, and
the schema they build (which `python -m study check` compares a file against). Opening and migrating a file is
study.db's; nothing here touches a file.
"""
from __future__ import annotations

import sqlite3

APPLICATION_ID = 0x52_4D_53_54  # "RMST": marks files made by this package

# Each entry moves the schema from version i to i+1. Never edit a released entry: add a new one.
MIGRATIONS: list[str] = [
    # 1: core tables
    """
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE CHECK (length(slug) BETWEEN 1 AND 40),
        title TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
        created_at TEXT NOT NULL,
        closed_at TEXT,
        seed INTEGER NOT NULL,
        labels_per_item INTEGER NOT NULL CHECK (labels_per_item >= 1),
        trials_per_condition INTEGER NOT NULL CHECK (trials_per_condition >= 1),
        catch_per_participant INTEGER NOT NULL CHECK (catch_per_participant >= 0),
        presentation_ms INTEGER CHECK (presentation_ms IS NULL OR presentation_ms > 0),
        abandon_after_min REAL NOT NULL CHECK (abandon_after_min > 0),
        completion_code TEXT NOT NULL,
        redirect_url TEXT,
        classes_json TEXT NOT NULL,
        design_json TEXT NOT NULL
    );
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id),
        role TEXT NOT NULL CHECK (role IN ('trial', 'catch', 'practice')),
        condition TEXT NOT NULL,
        attack TEXT NOT NULL,
        source_model TEXT NOT NULL,
        test_index INTEGER NOT NULL CHECK (test_index >= 0),
        true_label INTEGER NOT NULL CHECK (true_label BETWEEN 0 AND 9),
        source_pred INTEGER CHECK (source_pred IS NULL OR source_pred BETWEEN 0 AND 9),
        linf REAL,
        l2 REAL,
        png BLOB NOT NULL,
        png_sha256 TEXT NOT NULL,
        set_dir TEXT NOT NULL,
        set_file TEXT NOT NULL,
        UNIQUE (study_id, role, condition, test_index)
    );
    CREATE TABLE item_predictions (
        item_id INTEGER NOT NULL REFERENCES items(id),
        model TEXT NOT NULL,
        pred INTEGER CHECK (pred IS NULL OR pred BETWEEN 0 AND 9),
        PRIMARY KEY (item_id, model)
    );
    CREATE TABLE participants (
        id INTEGER PRIMARY KEY,
        study_id INTEGER NOT NULL REFERENCES studies(id),
        uid TEXT NOT NULL UNIQUE,
        external_id TEXT NOT NULL,
        external_study_id TEXT,
        external_session_id TEXT,
        joined_at TEXT NOT NULL,
        consent_at TEXT,
        completed_at TEXT,
        last_seen_at TEXT NOT NULL,
        excluded INTEGER NOT NULL DEFAULT 0 CHECK (excluded IN (0, 1)),
        exclusion_reason TEXT,
        UNIQUE (study_id, external_id)
    );
    CREATE TABLE assignments (
        id INTEGER PRIMARY KEY,
        participant_id INTEGER NOT NULL REFERENCES participants(id),
        item_id INTEGER NOT NULL REFERENCES items(id),
        position INTEGER NOT NULL CHECK (position >= 0),
        UNIQUE (participant_id, position),
        UNIQUE (participant_id, item_id)
    );
    CREATE TABLE responses (
        id INTEGER PRIMARY KEY,
        assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(id),
        participant_id INTEGER NOT NULL REFERENCES participants(id),
        item_id INTEGER NOT NULL REFERENCES items(id),
        label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
        rt_ms REAL CHECK (rt_ms IS NULL OR rt_ms >= 0),
        shown_ms REAL CHECK (shown_ms IS NULL OR shown_ms >= 0),
        mode TEXT NOT NULL,
        input TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (participant_id, item_id)
    );
    """,
    # 2: indexes for allocation/progress queries, and an audit log of organiser actions
    """
    CREATE INDEX idx_items_study_role ON items(study_id, role);
    CREATE INDEX idx_assignments_item ON assignments(item_id);
    CREATE INDEX idx_responses_item ON responses(item_id);
    CREATE INDEX idx_participants_study ON participants(study_id);
    CREATE TABLE admin_log (
        id INTEGER PRIMARY KEY,
        study_id INTEGER REFERENCES studies(id),
        at TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 3: keyed participant links, reservations counted from the last answer, organiser lockout kept in the file
    """
    ALTER TABLE studies ADD COLUMN link_key TEXT;
    UPDATE studies SET link_key = lower(hex(randomblob(16))) WHERE link_key IS NULL;
    CREATE UNIQUE INDEX idx_studies_link_key ON studies(link_key);
    ALTER TABLE participants ADD COLUMN active_at TEXT;
    UPDATE participants SET active_at = coalesce(
        (SELECT max(r.created_at) FROM responses r WHERE r.participant_id = participants.id), consent_at, joined_at);
    ALTER TABLE participants ADD COLUMN timed_out_at TEXT;
    CREATE TABLE auth_failures (
        scope TEXT PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
        lockouts INTEGER NOT NULL DEFAULT 0 CHECK (lockouts >= 0),
        locked_until REAL NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    """,
    # 4: which pages (browser sessions) were sent each trial, so an answer after a reload is marked as possibly
    # seen before. Answers stored before this version have no row (the export leaves their mark empty).
    """
    CREATE TABLE servings (
        assignment_id INTEGER NOT NULL REFERENCES assignments(id),
        page TEXT NOT NULL CHECK (length(page) BETWEEN 1 AND 64),
        served_at TEXT NOT NULL,
        PRIMARY KEY (assignment_id, page)
    ) WITHOUT ROWID;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction, so run the statements one by one.
    return [s.strip() for s in script.split(";") if s.strip()]


def expected_schema() -> dict[str, tuple[str, str]]:
    """{name: (type, normalised SQL)} of every table and index the migrations create."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for script in MIGRATIONS:
            for statement in statements(script):
                conn.execute(statement)
        return schema_of(conn)
    finally:
        conn.close()


def schema_of(conn: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    """{name: (type, normalised SQL)} of every table and index the connection's database holds."""
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    return {name: (kind, " ".join((sql or "").split())) for kind, name, sql in rows}
