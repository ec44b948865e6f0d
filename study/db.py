"""The study database: one SQLite file shared by the CLI, the Streamlit pages and the tests.

Every connection gets WAL mode, a busy timeout and foreign keys. The file is marked with our
`application_id` and carries its schema version in `user_version`; `open_db` migrates older files
and refuses anything it does not recognise (not SQLite, another program's SQLite, a newer schema)
without writing a byte to it. Here: opening (read-write with migration, or read-only), write transactions and
their lock waits, backups. The tables themselves are in study.schema, the server's shared connections in
study.pool.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

from randmask.core.safe_files import Output

from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, statements

BUSY_TIMEOUT_MS = 30_000
DEFAULT_DB_ENV = "STUDY_DB"
DEFAULT_DB_PATH = Path("study_data") / "study.db"
SQLITE_MAGIC = b"SQLite format 3\x00"


class StudyDBError(Exception):
    """The database file cannot be used (corrupt, foreign, too new, unreadable)."""


def default_db_path() -> Path:
    """`$STUDY_DB` if set, else `study_data/study.db` (git-ignored)."""
    return Path(os.environ.get(DEFAULT_DB_ENV) or DEFAULT_DB_PATH)


_HEADER_CHECKED: set[Path] = set()
_HEADER_LOCK = threading.Lock()


def _check_header(path: Path) -> None:
    """Refuse a non-empty file that is not SQLite before sqlite3 gets a chance to touch it.

    Done once per file and process, before this process opens any connection to it: closing another file
    descriptor on a database drops every POSIX lock the process's SQLite connections hold on it, and a thread
    doing that beside connections in other threads let other processes write at once and corrupt the file."""
    key = path.resolve()
    with _HEADER_LOCK:
        if key in _HEADER_CHECKED:
            return
        _read_header(path)
        if path.exists():
            _HEADER_CHECKED.add(key)


def _read_header(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise StudyDBError(f"{path} is not a SQLite database (wrong header); refusing to use or overwrite it")


def _connect(path: Path, timeout_s: float, check_same_thread: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def refuse_empty_file(path: Path, *, create: bool) -> None:
    """An existing 0-byte file, which SQLite would quietly make a database, is refused: an emptied file may be
    a study lost (a full disk, a bad copy), so not even `create` builds over it."""
    if path.is_file() and path.stat().st_size == 0:
        raise StudyDBError(f"{path} is empty, not a study database " + (
            "(remove it, or give a new file name)" if create else "(create a study first)"))


def open_db(path: str | Path | None = None, *, create: bool = True, timeout_s: float = BUSY_TIMEOUT_MS / 1000,
            check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open (and if needed create or migrate) the study database at `path`.

    Raises StudyDBError for a file that is not ours; a missing file is created only if `create`.
    `check_same_thread=False` is for a connection kept by one participant's session, whose reruns run
    one after another but each on a new thread.
    """
    path = Path(path) if path is not None else default_db_path()
    if path.is_dir():
        raise StudyDBError(f"{path} is a directory, not a database file")
    if not path.exists() and not create:
        raise StudyDBError(f"{path} does not exist (create a study first)")
    refuse_empty_file(path, create=create)
    _check_header(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = _connect(path, timeout_s, check_same_thread)
    except sqlite3.Error as e:
        raise StudyDBError(f"cannot open {path}: {e}") from e
    try:
        _prepare(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StudyDBError(f"{path} is not a usable SQLite database ({e})") from e
    except StudyDBError:
        conn.close()
        raise
    return sqlite_utils.Database(conn)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    app_id, version, n_tables = _identity(conn)
    if app_id != APPLICATION_ID and (app_id != 0 or n_tables > 0):
        raise StudyDBError(
            f"{path} is a SQLite database from another program (application_id={app_id}, "
            f"{n_tables} tables); refusing to use or overwrite it"
        )
    if version > SCHEMA_VERSION:
        raise StudyDBError(f"{path} has schema version {version}, newer than this code ({SCHEMA_VERSION}); update the code")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    if version < SCHEMA_VERSION:
        _migrate(conn, path)


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    n_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    return app_id, version, n_tables


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    _begin_immediate(conn)
    try:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        app_id, version, n_tables = _identity(conn)
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and n_tables > 0):
            raise StudyDBError(f"{path} changed under us into a foreign database; refusing to migrate it")
        for step in range(version, SCHEMA_VERSION):
            for statement in statements(MIGRATIONS[step]):
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so read-then-write steps
    (allocation, answer checks) are atomic across threads and processes."""
    _begin_immediate(db.conn)
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    else:
        db.conn.execute("COMMIT")


@contextlib.contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One read transaction: every query inside sees the database as it was at the first one, whatever
    writers commit meanwhile (WAL), so tables read one after another agree. Inside a transaction already: as is."""
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN")
    try:
        yield db
    finally:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")  # nothing was written: ending the read is all


def _begin_immediate(conn: sqlite3.Connection, attempts: int = 5) -> None:
    wait = _LOCK_WAIT.get()
    if wait is not None:
        _begin_speaking(conn, *wait)
        return
    # The busy timeout covers ordinary lock waits; a few SQLite paths (WAL reset or recovery by
    # another connection) return SQLITE_BUSY at once. Nothing has happened yet, so retrying is safe.
    for attempt in range(attempts):
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if attempt == attempts - 1 or not _is_busy(e):
                raise
            time.sleep(0.05 * 2 ** attempt)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    return any(w in str(error) for w in ("locked", "busy"))


LOCK_WAIT_ENV = "STUDY_LOCK_WAIT_S"
DEFAULT_LOCK_WAIT_S = 60.0
MAX_LOCK_WAIT_S = 24 * 3600.0
FIRST_POLL_S, LOCK_POLL_S = 0.25, 1.0  # how soon a command says it is waiting, then how often it tries
_LOCK_WAIT: contextvars.ContextVar[tuple[float, Callable[[str], None]] | None] = \
    contextvars.ContextVar("study_lock_wait", default=None)


def lock_wait_s(value: float | str | None = None) -> float:
    """How long a command waits for another process's write lock: `value` (a --lock-wait option), else
    $STUDY_LOCK_WAIT_S, else 60 s; a positive finite number of seconds up to a day."""
    given = value if value is not None else os.environ.get(LOCK_WAIT_ENV) or DEFAULT_LOCK_WAIT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_LOCK_WAIT_S:  # also refuses NaN
        source = "--lock-wait" if value is not None else LOCK_WAIT_ENV
        raise StudyDBError(f"{source} must be a number of seconds above 0 and at most {MAX_LOCK_WAIT_S:.0f}, "
                           f"got {str(given)[:40]!r}")
    return seconds


@contextlib.contextmanager
def speaking_lock_waits(limit_s: float, report: Callable[[str], None]) -> Iterator[None]:
    """Within this block, a write that finds the database locked by another process says so through `report`
    (after FIRST_POLL_S), keeps trying, and gives up after `limit_s` with a StudyDBError naming the file."""
    token = _LOCK_WAIT.set((limit_s, report))
    try:
        yield
    finally:
        _LOCK_WAIT.reset(token)


def _begin_speaking(conn: sqlite3.Connection, limit_s: float, report: Callable[[str], None]) -> None:
    path = conn.execute("PRAGMA database_list").fetchone()[2] or "the database"
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {int(min(FIRST_POLL_S, limit_s) * 1000)}")
    began, told = time.monotonic(), False
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
            waited = time.monotonic() - began
            if waited >= limit_s:
                raise StudyDBError(f"{path} is still locked by another process after {waited:.0f} s; nothing was "
                                   f"changed: try again later (--lock-wait or {LOCK_WAIT_ENV} sets the wait)")
            if not told:
                report(f"note: {path} is locked by another process (a server's or another command's write); "
                       f"waiting up to {limit_s:g} s")
                told = True
                conn.execute(f"PRAGMA busy_timeout = {int(min(LOCK_POLL_S, limit_s) * 1000)}")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous)}")


def integrity_problems(db: sqlite_utils.Database) -> list[str]:
    """Rows of `PRAGMA integrity_check` and `foreign_key_check`; empty when healthy."""
    rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    problems = [r for r in rows if r != "ok"]
    problems += [f"foreign key violation in {r[0]} rowid {r[1]}" for r in db.execute("PRAGMA foreign_key_check").fetchall()]
    return problems


def backup(source: str | Path, target: str | Path, *, pages_per_step: int = 256) -> int:
    """Copy a live study database to `target` with SQLite's online backup API; returns the target's size in bytes.

    Safe while participants write: the copy is a consistent snapshot, taken in small steps so writers
    wait only for one step at a time. `target` must not exist yet (a backup never overwrites anything); the copy
    is made under a new, unique name beside it (never through a link planted there) and renamed when complete."""
    source, target = Path(source), Path(target)
    if os.path.lexists(target):
        raise StudyDBError(f"{target} already exists; choose a new file name for the backup")
    if not target.parent.is_dir():
        raise StudyDBError(f"{target.parent} is not a folder")
    output = Output(target, folder=False, inputs=[source], option="backup")
    db = open_db(source, create=False)
    try:
        with output as partial:
            out = sqlite3.connect(str(partial), isolation_level=None)
            try:
                db.conn.backup(out, pages=pages_per_step, sleep=0.005)
                problems = [r[0] for r in out.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
                # A backup is a self-contained file: rollback journal, so it is one file to copy or archive.
                out.execute("PRAGMA journal_mode = DELETE")
            finally:
                out.close()
                Path(f"{partial}-journal").unlink(missing_ok=True)
            if problems:
                raise StudyDBError(f"the backup failed its integrity check: {problems[0]}")
    finally:
        db.close()
    return target.stat().st_size


def open_db_readonly(path: str | Path | None = None, *, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> sqlite_utils.Database:
    """Open an existing study database for reading only (`check`, `export`): SQLite's `mode=ro` plus
    `query_only`, no journal-mode switch, no migration. Anything that is not already a study database of this
    schema version (missing, empty, a FIFO, not SQLite, another program's, older or newer) is refused before a
    connection exists or right after, so the file is never modified."""
    path = Path(path) if path is not None else default_db_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StudyDBError(f"{path} does not exist") from None
    except OSError as e:
        raise StudyDBError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StudyDBError(f"{path} is not a regular file")
    if info.st_size == 0:
        raise StudyDBError(f"{path} is empty, not a study database")
    with path.open("rb") as f:
        head = f.read(100)
    if len(head) < 100 or head[:len(SQLITE_MAGIC)] != SQLITE_MAGIC:
        raise StudyDBError(f"{path} is not a SQLite database (wrong header)")
    if not Path(f"{path}-wal").exists():
        # no write-ahead log: the header's user_version (offset 60) and application_id (68) are current, so a
        # foreign file is refused before SQLite opens it (a WAL reader would leave -shm/-wal files beside it)
        problem = _identity_problem(path, int.from_bytes(head[68:72], "big"), int.from_bytes(head[60:64], "big"))
        if problem:
            raise StudyDBError(problem)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout_s, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        app_id, version, _ = _identity(conn)
    except sqlite3.Error as e:
        raise StudyDBError(f"{path} is not a usable SQLite database ({e})") from None
    problem = _identity_problem(path, app_id, version)
    if problem:
        conn.close()
        raise StudyDBError(problem)
    return sqlite_utils.Database(conn)


def _identity_problem(path: Path, app_id: int, version: int) -> str | None:
    if app_id != APPLICATION_ID:
        return f"{path} is not a study database (SQLite application_id {app_id})"
    if version != SCHEMA_VERSION:
        return (f"{path} has schema version {version}, this code reads {SCHEMA_VERSION}: "
                + ("update the code" if version > SCHEMA_VERSION else
                   "open it once with a writing command (e.g. `python -m study list`) to migrate it"))
    return None
