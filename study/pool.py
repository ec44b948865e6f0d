"""The participant server's shared connections: a few per process, borrowed by each script run and given back,
so that no visitor keeps one open."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from .db import default_db_path, open_db


class ConnectionPool:
    """A few connections shared by every session of a server process: a script run borrows one and gives it
    back, so nothing stays open per visitor (one connection per session ran a server out of file descriptors).
    At most `max_open` exist; a run that finds none free waits for one. A thread that borrows again while it holds
    one (the page's run calls the trial fragment, which borrows too) gets the one it holds: with nested borrows,
    `max_open` page runs at once each held one and waited for a second forever, and the server answered no one."""

    def __init__(self, path: str | Path, max_open: int = 8) -> None:
        self.path = Path(path)
        self._slots = threading.BoundedSemaphore(max_open)
        self._idle: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()
        self._held = threading.local()  # the connection this thread holds, if any
        self.opened = 0  # connections ever opened (tests read it)

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite_utils.Database]:
        held = getattr(self._held, "db", None)
        if held is not None:  # the outer borrow gives it back
            yield held
            return
        with self._slots:
            with self._lock:
                db = self._idle.pop() if self._idle else None
            if db is None:
                db = open_db(self.path, create=False, check_same_thread=False)
                self.opened += 1
            self._held.db = db
            try:
                yield db
            finally:
                self._held.db = None
                if db.conn.in_transaction:  # never hand on an open transaction (an exception mid-write)
                    db.conn.execute("ROLLBACK")
                with self._lock:
                    self._idle.append(db)

    def close(self) -> None:
        with self._lock:
            while self._idle:
                self._idle.pop().close()


_POOLS: dict[Path, ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(path: str | Path | None = None) -> ConnectionPool:
    """The process's pool for `path` (default: $STUDY_DB)."""
    key = Path(path if path is not None else default_db_path()).resolve()
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ConnectionPool(key)
        return pool
