"""`python -m study check`: everything a study database must satisfy before the pages or `export` trust it.

Reads only (use it on a connection from `open_db_readonly`). Each problem is one line; an empty list means
healthy. The checks, in order: SQLite's integrity and foreign keys; the schema, object by object, against the
one the migrations build; the storage type of every column; then the study rows themselves (names, class list,
design, items per condition, images and their hashes, answers that belong to their assignment).
"""
from __future__ import annotations

import json
import sqlite3

import sqlite_utils

from .design import _STUDY_COLUMNS, study_row_problems
from .schema import expected_schema, schema_of
from .sets import CIFAR10_TEST_SIZE, SetError, plain_png, png_chunks, sha256

N_CLASSES = 10
IMAGE_SIZE = 32
# storage classes (typeof) each declared column type may hold
_STORAGE = {"INTEGER": ("integer",), "REAL": ("real", "integer"), "TEXT": ("text",), "BLOB": ("blob",)}


def database_problems(db: sqlite_utils.Database) -> list[str]:
    """Every problem found, one line each (empty: the database is sound)."""
    try:
        problems = integrity_problems(db.conn)
        if problems:
            return problems
        problems = schema_problems(db.conn)
        if problems:
            return problems  # the row checks below assume our tables and columns
        problems = column_type_problems(db.conn)
        return problems or study_problems(db.conn)
    except sqlite3.DatabaseError as e:
        return [f"the database cannot be read: {e}"]


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """`integrity_check` (pages, NOT NULL, CHECK constraints) and `foreign_key_check`, run on an in-memory
    copy: on a read-only connection SQLite skips the CHECK constraints. The backup API copies a consistent
    snapshot, write-ahead log included."""
    copy = sqlite3.connect(":memory:")
    try:
        conn.backup(copy)
        problems = [r for (r,) in copy.execute("PRAGMA integrity_check").fetchall() if r != "ok"]
        problems += [f"foreign key violation in {table} rowid {rowid}"
                     for table, rowid, *_ in copy.execute("PRAGMA foreign_key_check").fetchall()]
    finally:
        copy.close()
    return problems


def schema_problems(conn: sqlite3.Connection) -> list[str]:
    want, have = expected_schema(), schema_of(conn)
    problems = [f"schema: {kind} {name} is missing" for name, (kind, _) in sorted(want.items()) if name not in have]
    problems += [f"schema: unexpected {kind} {name}" for name, (kind, _) in sorted(have.items()) if name not in want]
    problems += [f"schema: {want[name][0]} {name} differs from the expected definition"
                 for name in sorted(set(want) & set(have)) if want[name] != have[name]]
    return problems


def column_type_problems(conn: sqlite3.Connection) -> list[str]:
    """Values stored with the wrong type (a text true_label, say), which CHECK constraints may not catch."""
    problems = []
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for table in tables:
        for _, column, declared, notnull, _, _ in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
            allowed = _STORAGE.get(declared.upper())
            if allowed is None:
                continue
            allowed = allowed if notnull else (*allowed, "null")
            marks = ", ".join("?" for _ in allowed)
            # table and column names come from our own schema (checked above); only values are parameters
            n = conn.execute(f'SELECT count(*) FROM "{table}" WHERE typeof("{column}") NOT IN ({marks})',
                             allowed).fetchone()[0]
            if n:
                problems.append(f"{table}.{column}: {n} value(s) not stored as {declared}")
    return problems


def study_problems(conn: sqlite3.Connection) -> list[str]:
    problems: list[str] = []
    duplicates = conn.execute("SELECT slug, count(*) FROM studies GROUP BY slug HAVING count(*) > 1").fetchall()
    problems += [f"study name {slug!r} is used by {n} studies" for slug, n in duplicates]
    studies = conn.execute(f"SELECT {_STUDY_COLUMNS} FROM studies ORDER BY id").fetchall()
    for row in studies:
        study_id, slug, per_condition, catch = row[0], row[1], row[6], row[7]
        name = f"study {study_id} ({slug!r})"
        row_problems = study_row_problems(tuple(row))
        problems += [f"{name}: {p}" for p in row_problems]
        if row_problems:  # the counts below rely on the fields being sound
            continue
        conditions = json.loads(row[-2])["conditions"]
        if conditions:
            counts = dict(conn.execute("SELECT condition, count(*) FROM items WHERE study_id = ? AND role = 'trial' "
                                       "GROUP BY condition", [study_id]).fetchall())
            for condition in sorted(set(counts) - set(conditions)):
                problems.append(f"{name}: {counts[condition]} trial item(s) of condition {condition!r}, which the "
                                f"design does not list")
            for condition in conditions:
                if counts.get(condition, 0) < per_condition:
                    problems.append(f"{name}: condition {condition!r} has {counts.get(condition, 0)} trial item(s), "
                                    f"each participant needs {per_condition}")
        n_catch = conn.execute("SELECT count(*) FROM items WHERE study_id = ? AND role = 'catch'",
                               [study_id]).fetchone()[0]
        if n_catch < catch:
            problems.append(f"{name}: {n_catch} catch item(s), each participant needs {catch}")
    problems += _item_problems(conn)
    problems += _answer_problems(conn)
    return problems


def _item_problems(conn: sqlite3.Connection) -> list[str]:
    problems = []
    outside = conn.execute("SELECT count(*), min(id) FROM items WHERE test_index >= ?", [CIFAR10_TEST_SIZE]).fetchone()
    if outside[0]:
        problems.append(f"items: {outside[0]} test index(es) outside the CIFAR-10 test set (first: item {outside[1]})")
    for item_id, png, digest in conn.execute("SELECT id, png, png_sha256 FROM items ORDER BY id"):
        try:
            plain_png(png, IMAGE_SIZE)
            extra = sorted({kind.decode("latin-1") for kind, _ in png_chunks(png)} - {"IHDR", "IDAT", "IEND"})
            if extra:  # `create` stores images re-encoded without them
                raise SetError(f"PNG holds chunks {extra} besides IHDR, IDAT and IEND")
        except SetError as e:
            problems.append(f"item {item_id}: image: {e}")
            continue
        if sha256(png) != digest:
            problems.append(f"item {item_id}: image does not match its recorded SHA-256")
    return problems


def _answer_problems(conn: sqlite3.Connection) -> list[str]:
    """Rows that each reference valid rows, but rows that do not belong together."""
    checks = [
        ("responses whose item or participant differs from their assignment's",
         "SELECT count(*) FROM responses r JOIN assignments a ON a.id = r.assignment_id "
         "WHERE r.item_id != a.item_id OR r.participant_id != a.participant_id"),
        ("assignments of an item from another study than the participant's",
         "SELECT count(*) FROM assignments a JOIN participants p ON p.id = a.participant_id "
         "JOIN items i ON i.id = a.item_id WHERE i.study_id != p.study_id"),
    ]
    problems = []
    for text, sql in checks:
        n = conn.execute(sql).fetchone()[0]
        if n:
            problems.append(f"{n} {text}")
    return problems
