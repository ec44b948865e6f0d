"""What the participant server allows each browser session: a cap on open sessions per client address,
and a short idle time for sessions that never consent (a script holding sessions open holds nothing for
long). Streamlit-free: the server's script (participant_app/app.py) asks and acts on the answers.
Refusals are logged once per kind and interval, with a count, never once per hit."""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger("study")

SESSIONS_PER_ADDRESS_ENV = "STUDY_SESSIONS_PER_ADDRESS"
IDLE_BEFORE_CONSENT_ENV = "STUDY_IDLE_BEFORE_CONSENT_S"
DEFAULT_SESSIONS_PER_ADDRESS = 20  # tabs of one person, or a few people behind one NAT
DEFAULT_IDLE_BEFORE_CONSENT_S = 600.0  # time to read the consent text


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def client_address(remote_ip: str | None, headers: Mapping[str, str] | None) -> str:
    """The visitor's address: the peer, or, when the peer is a proxy on this machine, the last address that
    proxy appended to X-Forwarded-For (the only one it vouches for; earlier ones are the client's to invent)."""
    peer = remote_ip or "unknown"
    try:
        local = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        local = False
    forwarded = (headers or {}).get("X-Forwarded-For") or (headers or {}).get("x-forwarded-for")
    if local and forwarded:
        last = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return peer
    return peer


class RefusalLog:
    """Log each kind of refusal at most once per `interval_s`, with how many were refused meanwhile."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def refused(self, kind: str, detail: str = "") -> bool:
        """Count one refusal; True when this call wrote the log line."""
        now = self._clock()
        with self._lock:
            self._count[kind] = self._count.get(kind, 0) + 1
            if now - self._last.get(kind, -float("inf")) < self.interval_s:
                return False
            count, self._count[kind], self._last[kind] = self._count[kind], 0, now
        log.warning("refused %d x %s in the last %.0f s%s", count, kind, self.interval_s, f" ({detail})" if detail else "")
        return True


@dataclass
class _Session:
    address: str
    started: float
    consented: bool = False


class SessionGuard:
    """Book-keeping of the server's browser sessions, by Streamlit session id."""

    def __init__(self, per_address: int | None = None, idle_before_consent_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, refusals: RefusalLog | None = None) -> None:
        self.per_address = int(per_address or _env_number(SESSIONS_PER_ADDRESS_ENV, DEFAULT_SESSIONS_PER_ADDRESS))
        self.idle_before_consent_s = idle_before_consent_s or _env_number(IDLE_BEFORE_CONSENT_ENV,
                                                                          DEFAULT_IDLE_BEFORE_CONSENT_S)
        self._clock = clock
        self.refusals = refusals or RefusalLog(clock=clock)
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._disconnected: set[str] = set()

    def has_room(self, session_id: str, address: str) -> bool:
        """Would `admit` take this session (without counting a refusal)?"""
        with self._lock:
            return session_id in self._sessions or sum(s.address == address for s in self._sessions.values()) < self.per_address

    def admit(self, session_id: str, address: str) -> bool:
        """True for a session already known or one more within its address's cap."""
        with self._lock:
            if session_id in self._sessions:
                return True
            if sum(s.address == address for s in self._sessions.values()) >= self.per_address:
                refused = True
            else:
                self._sessions[session_id] = _Session(address, self._clock())
                refused = False
        if refused:
            self.refusals.refused("sessions over the per-address cap", f"cap {self.per_address}")
        return not refused

    def consented(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._sessions:
                self._sessions[session_id].consented = True

    def idle(self) -> list[str]:
        """Sessions that have not consented within the idle time: the server closes them."""
        cutoff = self._clock() - self.idle_before_consent_s
        with self._lock:
            idle = [sid for sid, s in self._sessions.items() if not s.consented and s.started < cutoff]
        if idle:
            self.refusals.refused("sessions idle before consent", f"{len(idle)} now")
        return idle

    def gone(self, disconnected: Iterable[str]) -> list[str]:
        """Of the sessions the server keeps after their browser left (for a quick reconnect), those already
        disconnected at the previous sweep: the server shuts them down (each holds an event loop, and
        Streamlit would keep up to 128 of them for minutes). Everything a participant did is in the database."""
        now = set(disconnected)
        with self._lock:
            stale, self._disconnected = sorted(now & self._disconnected), now
        return stale

    def keep_only(self, alive: Iterable[str]) -> None:
        """Forget sessions the server no longer has."""
        alive = set(alive)
        with self._lock:
            for sid in [sid for sid in self._sessions if sid not in alive]:
                del self._sessions[sid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
