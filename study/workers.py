"""`python -m study serve --workers N`: N participant-server processes on one study database.

Each worker is the one-process participant server (study/serve.py) on its own port: --port, --port + 1, ...
A proxy in front spreads visitors over them with sticky sessions (README: Caddy `lb_policy ip_hash`, nginx
`ip_hash`). What must hold across workers is in the study database already (each answer stored once, in
order; k labels per item; organiser lockouts); the one thing a worker kept in memory that must be global, the
count of open sessions per client address, goes to a small table shared by the workers (SharedSessionGuard),
so a stranger cannot open N times the cap by reaching every worker. This process, the supervisor, starts the
workers, restarts one that dies (kill -9 included: a worker acknowledges an answer only after its commit),
and stops them all on SIGTERM, SIGINT or SIGHUP. Streamlit-free.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import hmac
import http.client
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .errors import configure_logging
from .guard import SessionGuard, _Session

log = logging.getLogger("study")

WORKER_ENV = "STUDY_WORKER"  # this worker's slot, 0 .. N-1
SESSIONS_ENV = "STUDY_WORKER_SESSIONS"  # the shared session table (a SQLite file in the supervisor's folder)
KEY_ENV = "STUDY_WORKER_KEY"  # keys the address digests in that table (hex)
START_TIMEOUT_S = 180.0  # a worker's first health answer (Streamlit takes seconds to start on a loaded machine)
STOP_TIMEOUT_S = 15.0
RESTARTS, RESTART_WINDOW_S = 5, 60.0  # a worker that dies this often this fast is not restarted again
POLL_S = 0.5

_SCHEMA = ("CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, worker INTEGER NOT NULL, "
           "client TEXT NOT NULL)",
           "CREATE INDEX IF NOT EXISTS sessions_client ON sessions (client)")


def _connect_table(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # live sessions only: nothing in it outlives the server
    return conn


class SharedSessionGuard(SessionGuard):
    """A SessionGuard whose per-address cap counts the sessions of every worker: each admitted session is a row
    (session id, worker, keyed digest of the address) in the table the supervisor made. Idle and left sessions
    stay each worker's own business. The table holds no address (an HMAC under a key that lives only in the
    processes' memory), and lies in /dev/shm where there is one. If the table fails, the worker falls back to its
    own count (logged), so participants are never turned away by it."""

    def __init__(self, path: str | Path, worker: int, key: bytes, **kwargs) -> None:
        super().__init__(**kwargs)
        self.worker, self._key = worker, key
        self._table = _connect_table(path)
        self._table_lock = threading.Lock()  # one connection, used by script threads and the sweep
        with self._table_lock:
            self._table.execute("DELETE FROM sessions WHERE worker = ?", [worker])  # an earlier life of this slot

    def _client(self, address: str) -> str:
        return hmac.new(self._key, address.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def _known(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def _failed(self, e: sqlite3.Error) -> None:
        self.refusals.refused("shared session table errors (capping this worker's sessions only)", f"{type(e).__name__}: {e}")

    def has_room(self, session_id: str, address: str) -> bool:
        if self._known(session_id):
            return True
        try:
            with self._table_lock:
                open_now = self._table.execute("SELECT count(*) FROM sessions WHERE client = ?",
                                               [self._client(address)]).fetchone()[0]
        except sqlite3.Error as e:
            self._failed(e)
            return super().has_room(session_id, address)
        return open_now < self.per_address

    def admit(self, session_id: str, address: str) -> bool:
        if self._known(session_id):
            return True
        client = self._client(address)
        try:
            with self._table_lock:  # held until the session is in both places, so a sweep never splits them
                self._table.execute("BEGIN IMMEDIATE")
                try:
                    open_now = self._table.execute("SELECT count(*) FROM sessions WHERE client = ? AND session_id != ?",
                                                   [client, session_id]).fetchone()[0]
                    if open_now < self.per_address:
                        self._table.execute("INSERT OR REPLACE INTO sessions (session_id, worker, client) VALUES (?, ?, ?)",
                                            [session_id, self.worker, client])
                    self._table.execute("COMMIT")
                except BaseException:
                    self._table.execute("ROLLBACK")
                    raise
                if open_now < self.per_address:
                    with self._lock:
                        self._sessions[session_id] = _Session(address, self._clock())
        except sqlite3.Error as e:
            self._failed(e)
            return super().admit(session_id, address)
        if open_now >= self.per_address:
            self.refusals.refused("sessions over the per-address cap", f"cap {self.per_address}, all workers")
            return False
        return True

    def keep_only(self, alive: Iterable[str]) -> None:
        with self._table_lock:
            super().keep_only(alive)
            with self._lock:
                mine = set(self._sessions)
            try:
                rows = [r[0] for r in self._table.execute("SELECT session_id FROM sessions WHERE worker = ?",
                                                           [self.worker])]
                gone = [(sid,) for sid in rows if sid not in mine]
                if gone:
                    self._table.executemany("DELETE FROM sessions WHERE session_id = ?", gone)
            except sqlite3.Error as e:
                self._failed(e)


def session_guard_from_env() -> SessionGuard:
    """The guard a participant-server process uses: shared with the other workers when the supervisor started
    it (its variables set), else the process's own."""
    path = os.environ.get(SESSIONS_ENV)
    if not path:
        return SessionGuard()
    return SharedSessionGuard(path, int(os.environ[WORKER_ENV]), bytes.fromhex(os.environ[KEY_ENV]))


# ------------------------------------------------------------------------------------------------ supervisor
FOLDER_PREFIX, OWNER_FILE = "study-serve-", "supervisor.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state_folder() -> Path:
    """A private folder for the session table, in memory (/dev/shm) where the system has one. Folders that
    supervisors killed with -9 left there (their pid gone) are removed first."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    for old in base.glob(f"{FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError, ValueError):
            if old.is_dir() and old.stat().st_uid == os.getuid() and not _alive(int((old / OWNER_FILE).read_text())):
                shutil.rmtree(old)
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=base))
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    return folder


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For a worker's preexec_fn: SIGTERM when the supervisor dies, even by kill -9 (Linux; elsewhere a no-op)."""
    def set_death_signal() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before that took effect
            os._exit(1)
    return set_death_signal


def _describe(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def health_url(address: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/_stcore/health"


def healthy(address: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(health_url(address, port), timeout=timeout_s) as response:
            return response.read() == b"ok"
    except (OSError, http.client.HTTPException):  # nothing there, or something that does not speak HTTP
        return False


class WorkerFailed(RuntimeError):
    """A worker did not start, or kept dying."""


class Supervisor:
    """Starts `len(ports)` workers (`argv_for(port)` each, environment `env` plus its slot), restarts one that
    dies, and stops them all when asked."""

    def __init__(self, argv_for: Callable[[int], list[str]], env: dict[str, str], address: str,
                 ports: Sequence[int], cwd: Path) -> None:
        self.argv_for, self.env, self.address, self.ports, self.cwd = argv_for, env, address, list(ports), cwd
        self.procs: list[subprocess.Popen | None] = [None] * len(self.ports)
        self.starts = [collections.deque(maxlen=RESTARTS) for _ in self.ports]
        self.stopping = threading.Event()
        self.folder: Path | None = None
        self._key = secrets.token_bytes(32)

    # -------------------------------------------------------------------------------------------- the table
    def _make_table(self) -> Path:
        self.folder = _state_folder()
        path = self.folder / "sessions.db"
        conn = _connect_table(path)
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
        finally:
            conn.close()
        return path

    def _forget_slot(self, slot: int) -> None:
        """A dead worker's sessions are gone with it: they no longer count against anyone's cap."""
        assert self.folder is not None
        conn = _connect_table(self.folder / "sessions.db")
        try:
            conn.execute("DELETE FROM sessions WHERE worker = ?", [slot])
        except sqlite3.Error as e:
            log.warning("could not clear worker %d's sessions from the shared table: %s", slot + 1, e)
        finally:
            conn.close()

    # -------------------------------------------------------------------------------------------- workers
    def _start(self, slot: int, table: Path) -> None:
        env = {**self.env, WORKER_ENV: str(slot), SESSIONS_ENV: str(table), KEY_ENV: self._key.hex()}
        self.starts[slot].append(time.monotonic())
        self.procs[slot] = subprocess.Popen(self.argv_for(self.ports[slot]), env=env, cwd=self.cwd,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent(os.getpid()))

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = set(range(len(self.ports)))
        while waiting:
            for slot in sorted(waiting):
                proc = self.procs[slot]
                assert proc is not None
                if proc.poll() is not None:
                    raise WorkerFailed(f"worker {slot + 1} (port {self.ports[slot]}) did not start "
                                       f"({_describe(proc.returncode)}; its log is above)")
                if healthy(self.address, self.ports[slot]):
                    waiting.discard(slot)
            if waiting and time.monotonic() > deadline:
                raise WorkerFailed(f"worker(s) on port(s) {', '.join(str(self.ports[s]) for s in sorted(waiting))} "
                                   f"did not answer within {START_TIMEOUT_S:.0f} s")
            if waiting and self.stopping.wait(POLL_S):
                return

    def _watch(self, table: Path) -> None:
        while not self.stopping.wait(POLL_S):
            for slot, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None or self.stopping.is_set():
                    continue
                starts = self.starts[slot]
                if len(starts) == RESTARTS and time.monotonic() - starts[0] < RESTART_WINDOW_S:
                    raise WorkerFailed(f"worker {slot + 1} (port {self.ports[slot]}) stopped {RESTARTS} times within "
                                       f"{RESTART_WINDOW_S:.0f} s (last: {_describe(proc.returncode)}); stopping all")
                log.warning("worker %d (port %d, pid %d) stopped (%s); starting it again", slot + 1, self.ports[slot],
                            proc.pid, _describe(proc.returncode))
                self._forget_slot(slot)
                self._start(slot, table)

    def _stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _on_signal(self, signum, frame) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Serve until a signal: 0 after a requested stop, 1 when a worker failed (one line on stderr)."""
        configure_logging()
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            table = self._make_table()
            for slot in range(len(self.ports)):
                self._start(slot, table)
            self._wait_healthy()
            if not self.stopping.is_set():
                pids = ", ".join(str(p.pid) for p in self.procs if p is not None)
                log.info("participant server: %d workers on %s, ports %d-%d (pids %s); put one proxy with sticky "
                         "sessions in front of them (README, 'Several workers')", len(self.ports), self.address,
                         self.ports[0], self.ports[-1], pids)
                self._watch(table)
            return 0
        except WorkerFailed as e:
            log.error("%s", e)
            return 1
        finally:
            self._stop_all()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
            for s, handler in handlers.items():
                signal.signal(s, handler)
