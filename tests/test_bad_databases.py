"""Bad database files for `python -m study check` and `export`: each refused or reported in one line, read
only: the file keeps its bytes and mtime (a read-only SQLite reader may only add its empty WAL companions)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from study.cli import main
from study.sets import write_set
from study.validate import KEY_RE

PNG16 = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00 \x00\x00\x00 \x10\x02\x00\x00\x00"  # 32x32, 16-bit RGB
         b"\x00\x00\x00\x00")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A sound study database: one study of 4 items, one participant with one answer."""
    root = tmp_path_factory.mktemp("dbtemplate")
    rng = np.random.default_rng(0)
    rows = [{"index": i, "true_label": i % 10, "source": "m", "attack": "PGD16", "source_pred": 1, "linf": 16.0,
             "l2": 400.5} for i in range(1, 5)]
    write_set(root / "set", rows, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in rows])
    db = root / "study.db"
    assert main(["create", "--db", str(db), "--name", "base", "--set", str(root / "set"),
                 "--catch-per-participant", "0", "--items-per-participant", "2"]) == 0
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    now = "2026-01-01T00:00:00.000+00:00"
    conn.execute("INSERT INTO participants (id, study_id, uid, external_id, joined_at, last_seen_at) "
                 "VALUES (1, 1, 'u1', 'p1', ?, ?)", [now, now])
    conn.execute("INSERT INTO assignments (id, participant_id, item_id, position) VALUES (1, 1, 1, 0)")
    conn.execute("INSERT INTO assignments (id, participant_id, item_id, position) VALUES (2, 1, 2, 1)")
    conn.execute("INSERT INTO responses (assignment_id, participant_id, item_id, label, rt_ms, mode, input, created_at) "
                 "VALUES (1, 1, 1, 3, 800, 'timed', 'click', ?)", [now])
    conn.close()
    return root


def sql(*statements: str, params: list | None = None, checks: bool = True, keys: bool = True):
    def apply(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA foreign_keys = {'ON' if keys else 'OFF'}")
        conn.execute(f"PRAGMA ignore_check_constraints = {'OFF' if checks else 'ON'}")
        for statement in statements:
            conn.execute(statement, params or [])
        conn.close()
    return apply


def replace(make):
    def apply(path: Path) -> None:
        path.unlink()
        make(path)
    return apply


def write(data: bytes):
    return replace(lambda p: p.write_bytes(data))


def foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()


def corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page * 2:page * 3] = b"\xa5" * page  # the third page: a table's b-tree
    path.write_bytes(bytes(data))


def duplicated_study(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")
    (table_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'studies'").fetchone()
    conn.execute(table_sql.replace("CREATE TABLE studies", "CREATE TABLE studies_copy")
                 .replace("slug TEXT NOT NULL UNIQUE", "slug TEXT NOT NULL"))
    columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(studies)") if row[1] != "id")
    conn.execute("INSERT INTO studies_copy SELECT * FROM studies")
    conn.execute(f"INSERT INTO studies_copy ({columns}) SELECT {columns} FROM studies")  # same name, new id
    conn.execute("DROP TABLE studies")
    conn.execute("ALTER TABLE studies_copy RENAME TO studies")
    conn.close()


def png_of(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (32, 32)).save(buf, format="PNG")
    return buf.getvalue()


def item_png(data: bytes):
    return sql("UPDATE items SET png = ?, png_sha256 = ? WHERE id = 1",
               params=[data, hashlib.sha256(data).hexdigest()])


NINE = json.dumps(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
SAME = json.dumps(["cat"] * 10)
# (name, corruption, what the message or one problem line says, readable: check reports problems (exit 1))
CASES = [
    ("missing", lambda p: p.unlink(), "does not exist", False),
    ("zero-bytes", write(b""), "is empty, not a study database", False),
    ("text-file", write(b"index,label\n1,2\n" * 20), "not a SQLite database (wrong header)", False),
    ("random-bytes", write(np.random.default_rng(1).bytes(4096)), "not a SQLite database", False),
    ("header-only", write(b"SQLite format 3\x00" + bytes(40)), "not a SQLite database", False),
    ("fifo", replace(os.mkfifo), "is not a regular file", False),
    ("directory", replace(lambda p: p.mkdir()), "is not a regular file", False),
    ("foreign-sqlite", replace(foreign_sqlite), "is not a study database (SQLite application_id 0)", False),
    ("other-application", sql("PRAGMA application_id = 12345"), "application_id 12345", False),
    ("newer-schema", sql("PRAGMA user_version = 99"), "schema version 99, this code reads", False),
    ("older-schema", sql("PRAGMA user_version = 1"), "to migrate it", False),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:8192]), "database disk image is malformed", False),
    ("corrupt-page", corrupt_middle, "", True),
    ("responses-dropped", sql("DROP TABLE responses"), "schema: table responses is missing", True),
    ("extra-table", sql("CREATE TABLE evil (x)"), "schema: unexpected table evil", True),
    ("index-dropped", sql("DROP INDEX idx_items_study_role"), "schema: index idx_items_study_role is missing", True),
    ("column-added", sql("ALTER TABLE items ADD COLUMN note TEXT"), "schema: table items differs", True),
    ("duplicated-study", duplicated_study, "schema: table studies differs", True),
    ("classes-empty-list", sql("UPDATE studies SET classes_json = '[]'"),
     "classes_json is not a list of 10 distinct class names", True),
    ("classes-true", sql("UPDATE studies SET classes_json = 'true'"), "classes_json is not a list", True),
    ("classes-not-json", sql("UPDATE studies SET classes_json = '{oops'"), "classes_json is not valid JSON", True),
    ("classes-nine", sql("UPDATE studies SET classes_json = ?", params=[NINE]), "classes_json is not a list", True),
    ("classes-duplicates", sql("UPDATE studies SET classes_json = ?", params=[SAME]), "classes_json is not", True),
    ("classes-deep-nesting", sql("UPDATE studies SET classes_json = ?", params=["[" * 100_000]),
     "classes_json is not valid JSON", True),
    ("design-empty", sql("UPDATE studies SET design_json = '{}'"), "design_json has no list of", True),
    ("design-not-json", sql("UPDATE studies SET design_json = 'nope'"), "design_json is not valid JSON", True),
    ("design-other-conditions", sql("""UPDATE studies SET design_json = '{"conditions": ["other"]}'"""),
     "which the design does not list", True),
    ("true-label-text", sql("UPDATE items SET true_label = 'abc' WHERE id = 1", checks=False),
     "CHECK constraint failed in items", True),
    ("true-label-42", sql("UPDATE items SET true_label = 42 WHERE id = 1", checks=False), "CHECK constraint", True),
    ("status-invalid", sql("UPDATE studies SET status = 'maybe'", checks=False), "CHECK constraint failed", True),
    ("response-label-text", sql("UPDATE responses SET label = 'x'", checks=False), "CHECK constraint failed", True),
    ("rt-negative", sql("UPDATE responses SET rt_ms = -5", checks=False), "CHECK constraint failed", True),
    ("seed-text", sql("UPDATE studies SET seed = 'x'"), "studies.seed: 1 value(s) not stored as INTEGER", True),
    ("linf-text", sql("UPDATE items SET linf = 'big' WHERE id = 2"), "items.linf: 1 value(s) not stored as REAL", True),
    ("png-as-text", sql("UPDATE items SET png = 'abc' WHERE id = 2"), "items.png: 1 value(s) not stored as BLOB", True),
    ("test-index-99999", sql("UPDATE items SET test_index = 99999 WHERE id = 3"),
     "test index(es) outside the CIFAR-10 test set (first: item 3)", True),
    ("png-hash-mismatch", sql("UPDATE items SET png_sha256 = '00' WHERE id = 1"),
     "item 1: image does not match its recorded SHA-256", True),
    ("png-16-bit", item_png(PNG16), "item 1: image: PNG has bit depth 16", True),
    ("png-rgba", item_png(png_of("RGBA")), "item 1: image: PNG has bit depth 8 and colour type 6", True),
    ("png-not-png", item_png(b"GIF89a"), "item 1: image: not a PNG file", True),
    ("foreign-key-violation", sql("UPDATE items SET study_id = 999 WHERE id = 4", keys=False),
     "foreign key violation in items", True),
    ("answer-not-its-assignment", sql("UPDATE responses SET item_id = 3"),
     "1 responses whose item or participant differs from their assignment's", True),
    ("catch-shortfall", sql("UPDATE studies SET catch_per_participant = 3"),
     "0 catch item(s), each participant needs 3", True),
    ("condition-shortfall", sql("UPDATE studies SET trials_per_condition = 50"), "each participant needs 50", True),
    ("slug-invalid", sql("UPDATE studies SET slug = 'Bad Slug'"), "slug is 'Bad Slug', expected 1-40 lowercase letters", True),
]


def _copy(template: Path, tmp_path: Path, corrupt) -> Path:
    db = tmp_path / "data" / "study.db"
    db.parent.mkdir()
    shutil.copy(template / "study.db", db)
    corrupt(db)
    return db


@pytest.mark.parametrize("name, corrupt, fragment, readable", CASES, ids=[c[0] for c in CASES])
def test_check_reports_a_bad_database_and_writes_nothing(template, tmp_path, capsys, name, corrupt, fragment,
                                                         readable):
    db = _copy(template, tmp_path, corrupt)
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["check", "--db", str(db)], capsys)
    if readable:  # the problems on stdout, one line each; one summary error line
        assert_one_line_error(code, err, "problem(s), listed above", codes=(1,))
        assert out.strip() and fragment in out and "Traceback" not in out
    else:
        assert_one_line_error(code, err, fragment)
    assert_unchanged(before, tree_state(tmp_path), sqlite_readers=True)


@pytest.mark.parametrize("name, corrupt, fragment, readable", CASES, ids=[c[0] for c in CASES])
def test_export_refuses_a_bad_database_and_writes_nothing(template, tmp_path, capsys, name, corrupt, fragment,
                                                          readable):
    db = _copy(template, tmp_path, corrupt)
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["export", "--db", str(db), "--out", str(tmp_path / "out"), "--no-cifar10h",
                                     "--bootstrap", "10"], capsys)
    line = assert_one_line_error(code, err, "fails `python -m study check`" if readable else fragment)
    assert not readable or "first: " in line
    assert out == ""
    assert_unchanged(before, tree_state(tmp_path), sqlite_readers=True)  # no out/ folder either


def test_the_template_passes_check_and_exports(template, tmp_path, capsys):
    db = _copy(template, tmp_path, lambda p: None)
    code, out, err = run_main(main, ["check", "--db", str(db)], capsys)
    assert code == 0 and out.startswith("ok: schema version") and "1 studies" in out, err
    code, out, err = run_main(main, ["export", "--db", str(db), "--out", str(tmp_path / "out"), "--no-cifar10h",
                                     "--bootstrap", "10"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "responses.csv").read_text().count("\n") == 2  # header + the one answer


def test_check_never_switches_a_database_to_wal(template, tmp_path, capsys):
    db = _copy(template, tmp_path, sql("PRAGMA journal_mode = DELETE"))
    assert db.read_bytes()[18:20] == b"\x01\x01"  # rollback journal
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["check", "--db", str(db)], capsys)
    assert code == 0, err
    assert_unchanged(before, tree_state(tmp_path))  # not even a companion file: no WAL is involved
    assert db.read_bytes()[18:20] == b"\x01\x01"


# ------------------------------------------------- every stored field checked before use, by every study command
FIELD_CASES = [
    ("classes-null", "classes_json", "null", "classes_json is not a list of 10"),
    ("classes-42", "classes_json", 42, "classes_json is not a list of 10"),
    ("classes-text-json", "classes_json", '"airplane"', "classes_json is not a list of 10"),
    ("design-deep-nesting", "design_json", "[" * 100_000 + "]" * 100_000, "design_json is not valid JSON"),
    ("design-null", "design_json", "null", "design_json has no list of distinct condition names"),
    ("design-blob", "design_json", b"{}", "design_json is stored as bytes"),
    ("labels-text", "labels_per_item", "abc", "labels_per_item is 'abc', expected an integer >= 1"),
    ("labels-real", "labels_per_item", 2.5, "labels_per_item is 2.5"),
    ("trials-text", "trials_per_condition", "x", "trials_per_condition is 'x'"),
    ("abandon-text", "abandon_after_min", "soon", "abandon_after_min is 'soon'"),
    ("presentation-text", "presentation_ms", "fast", "presentation_ms is 'fast'"),
    ("link-key-null", "link_key", None, "link_key is None, expected 16-64 letters"),
    ("link-key-newline", "link_key", "abcdefghijklmnop\nq", "link_key is 'abcdefghijklmnop\\nq'"),
    ("link-key-short", "link_key", "abc", "link_key is 'abc'"),
    ("seed-negative", "seed", -1, "seed is -1, expected an integer >= 0"),
]
STUDY_COMMANDS = [["list"], ["link", "base"], ["close", "--study", "base"], ["open", "--study", "base"],
                  ["exclude", "--study", "base", "--participant", "1"], ["report", "--out", "{o}/report"],
                  ["export", "--out", "{o}/out", "--no-cifar10h", "--bootstrap", "10"]]


def _set_field(column: str, value):
    # CHECK constraints of the table would refuse some values; a damaged file need not have obeyed them
    return sql(f"UPDATE studies SET {column} = ?", params=[value], checks=False)


@pytest.mark.parametrize("name, column, value, fragment", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_check_reports_each_bad_stored_field(template, tmp_path, capsys, name, column, value, fragment):
    db = _copy(template, tmp_path, _set_field(column, value))
    before = tree_state(tmp_path)
    code, out, err = run_main(main, ["check", "--db", str(db)], capsys)
    assert_one_line_error(code, err, "problem(s), listed above", codes=(1,))
    # a value of the wrong storage class is already a problem of the schema check: the field is named either way
    assert (fragment in out or f"studies.{column}: 1 value(s) not stored as" in out) and "Traceback" not in out, out
    assert_unchanged(before, tree_state(tmp_path), sqlite_readers=True)


@pytest.mark.parametrize("command", STUDY_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name, column, value, fragment", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_every_study_command_refuses_a_bad_stored_field_in_one_line(template, tmp_path, capsys, command, name,
                                                                     column, value, fragment):
    db = _copy(template, tmp_path, _set_field(column, value))
    before = tree_state(tmp_path)
    argv = [command[0], "--db", str(db), *(a.format(o=tmp_path) for a in command[1:])]
    code, out, err = run_main(main, argv, capsys)
    line = assert_one_line_error(code, err)
    # export and report run the whole check first and quote its first problem; the others name the field
    assert (fragment if command[0] not in ("export", "report") else column) in line
    assert "key=None" not in out
    assert_unchanged(before, tree_state(tmp_path), sqlite_readers=True)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
stored_values = st.one_of(json_values.map(json.dumps), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.binary(max_size=8),
                          st.none(), st.text(max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["classes_json", "design_json", "labels_per_item", "trials_per_condition",
                        "catch_per_participant", "presentation_ms", "abandon_after_min", "link_key", "seed",
                        "status", "title", "redirect_url"]), stored_values)
def test_any_stored_value_is_used_or_refused_in_one_line(template, tmp_path_factory, column, value):
    from study.db import StudyDBError
    from study.design import _STUDY_COLUMNS, _study, study_row_problems

    db = tmp_path_factory.mktemp("fuzz") / "study.db"
    shutil.copy(template / "study.db", db)
    try:
        _set_field(column, value)(db)
    except sqlite3.IntegrityError:  # NOT NULL holds even with CHECK constraints off: no file can hold it
        assume(False)
    conn = sqlite3.connect(db)
    row = conn.execute(f"SELECT {_STUDY_COLUMNS} FROM studies").fetchone()
    conn.close()
    problems = study_row_problems(row)
    assert all(p and "\n" not in p for p in problems)
    try:
        study = _study(row)
    except StudyDBError as exc:
        assert problems and "\n" not in str(exc)
    else:
        assert not problems
        assert len(study.classes) == 10 and study.conditions and study.labels_per_item >= 1
        assert KEY_RE.fullmatch(study.link_key)


EMPTY_DB_COMMANDS = [["list"], ["link", "base"], ["close", "--study", "base"], ["open", "--study", "base"],
                     ["exclude", "--study", "base", "--participant", "1"],
                     ["include", "--study", "base", "--participant", "1"], ["report", "--out", "{o}/r"],
                     ["check"], ["export", "--out", "{o}/x", "--no-cifar10h"], ["backup", "--out", "{o}/b.db"],
                     ["create", "--name", "z", "--set", "{t}/set", "--catch-per-participant", "0",
                      "--items-per-participant", "2"],
                     ["demo", "--out", "{o}/sets", "--images", "6"]]


@pytest.mark.parametrize("command", EMPTY_DB_COMMANDS, ids=lambda c: c[0])
def test_an_empty_db_file_is_never_made_a_database(template, tmp_path, capsys, command):
    """Not even by create or demo: an emptied file may be a study lost, and SQLite would quietly build over it."""
    db = tmp_path / "study.db"
    db.write_bytes(b"")
    before = tree_state(tmp_path)
    argv = [command[0], "--db", str(db), *(a.format(o=tmp_path, t=template) for a in command[1:])]
    code, _, err = run_main(main, argv, capsys)
    assert_one_line_error(code, err, "is empty, not a study database")
    assert_unchanged(before, tree_state(tmp_path))
    assert db.read_bytes() == b""


@pytest.mark.parametrize("option", ["--catch-set", "--practice-set"])
def test_a_catch_or_practice_set_that_is_also_a_trial_set_is_refused_at_create(template, tmp_path, capsys, option):
    before = tree_state(tmp_path)
    code, _, err = run_main(main, ["create", "--db", str(tmp_path / "s.db"), "--name", "x", "--set",
                                   str(template / "set"), option, str(template / "set") + "/",
                                   "--catch-per-participant", "1", "--items-per-participant", "2"], capsys)
    assert_one_line_error(code, err, f"{option} {template / 'set'} is also a trial set")
    assert_unchanged(before, tree_state(tmp_path))
