"""What the participant server allows each browser session: a cap on open sessions per client address,
a short idle time for sessions that never consent (a script holding sessions open holds nothing for
long), and budgets for the messages browsers send (RerunGate, MessageIntake), so that nobody can slow the
others. Streamlit-free: the server's script (participant_app/app.py) and launcher (participant_app/run.py)
ask and act on the answers. Refusals are logged once per kind and interval, with a count, never once per hit
(study.errors.REFUSALS, the process's one log of them)."""
from __future__ import annotations

import functools
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import REFUSALS, RefusalLog

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
        self.refusals = refusals or REFUSALS
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


# ------------------------------------------------------------------------------------------------ message budgets
# What a browser may send the participant server. The page itself only ever sends rerun requests (page loads,
# clicks, the trial widget's answers) and heartbeats; clear_cache, for one, would empty the server's shared
# resources (this guard among them) for everyone, and load_git_info runs git.
PAGE_MESSAGES = frozenset({"rerun_script", "app_heartbeat"})
PRUNE_AT = 4096  # keys kept before idle (full) buckets are dropped: a dropped full bucket is the same as a new one


@dataclass(frozen=True)
class Rate:
    """A token bucket's settings: `per_s` on average, up to `burst` at once."""
    per_s: float
    burst: float


# Reruns cost a script run (and the answers in them database writes). A participant answering every 300 ms
# sends 3.3 fragment reruns a second: within every budget below, so a genuine participant is never slowed.
# A whole-page rerun (a page load, a click outside the trial widget) costs about two of the widget's.
RERUNS_PER_SESSION = Rate(4.0, 20)
RERUNS_PER_PARTICIPANT = Rate(4.0, 20)  # all tabs of one participant link together
RERUNS_PER_ADDRESS = Rate(8.0, 40)  # all tabs of one client address together: a few people behind one NAT
WHOLE_PAGE_COST = 2
# Any message costs the server's event loop a little (receiving, parsing); a flood of them cost everyone.
MESSAGES_PER_CONNECTION = Rate(10.0, 40)
MESSAGES_PER_ADDRESS = Rate(30.0, 120)
CONNECTIONS_PER_ADDRESS = Rate(0.5, 30)  # new websockets: page loads and reconnects


EPSILON, MIN_WAIT_S = 1e-9, 1e-3


def per_address(rate: Rate) -> Rate:
    """An address's budget, in proportion to the sessions it may open: an organiser raising
    $STUDY_SESSIONS_PER_ADDRESS for a lab behind one NAT raises its budgets with it."""
    scale = max(1.0, _env_number(SESSIONS_PER_ADDRESS_ENV, DEFAULT_SESSIONS_PER_ADDRESS) / DEFAULT_SESSIONS_PER_ADDRESS)
    return Rate(rate.per_s * scale, rate.burst * scale)


class TokenBucket:
    __slots__ = ("per_s", "burst", "tokens", "stamp")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_s, self.burst, self.tokens, self.stamp = rate.per_s, rate.burst, float(rate.burst), now

    def _fill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now

    def wait(self, now: float, cost: float = 1) -> float:
        """Seconds until `cost` tokens are there (0: now); never a wait too short for the clock to pass."""
        self._fill(now)
        return 0.0 if self.tokens >= cost - EPSILON else max((cost - self.tokens) / self.per_s, MIN_WAIT_S)

    def take(self, now: float, cost: float = 1) -> float:
        """Take `cost` tokens, in advance if need be: the seconds until they are really there (0: now)."""
        self._fill(now)
        self.tokens -= cost
        return max(0.0, -self.tokens / self.per_s)

    def full(self, now: float) -> bool:
        self._fill(now)
        return self.tokens >= self.burst


class Buckets:
    """A token bucket per key (session, participant, address), made on first use; idle ones are forgotten."""

    def __init__(self, rate: Rate, prune_at: int = PRUNE_AT) -> None:
        self.rate, self.prune_at = rate, prune_at
        self._buckets: dict[object, TokenBucket] = {}

    def __call__(self, key: object, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.prune_at:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
        return bucket

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= self.prune_at:  # keys made faster than they refill: forget the oldest half
            for key in list(self._buckets)[:len(self._buckets) // 2]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@functools.lru_cache(maxsize=1024)  # a page sends the same query with every rerun
def participant_key(query_string: str) -> tuple[str, str] | None:
    """(study, participant id) of a page's query string, or None where it names no valid participant."""
    from urllib.parse import parse_qs

    from .validate import PARTICIPANT_KEYS, InvalidLink, parse_link

    if len(query_string) > 2048:  # a real link is far shorter
        return None
    try:
        params = parse_qs(query_string, max_num_fields=32)
        link = parse_link({k: v for k, v in params.items() if k in ("study", *PARTICIPANT_KEYS)})
    except (InvalidLink, ValueError):
        return None
    return link.study or "", link.external_id


_TRIGGERS = ("trigger_value", "string_trigger_value", "json_trigger_value", "chat_input_value")


def _active_trigger(state) -> bool:
    kind = state.WhichOneof("value")
    if kind not in _TRIGGERS:
        return False
    value = getattr(state, kind)
    return bool(value.ListFields()) if hasattr(value, "ListFields") else bool(value)


def fold_reruns(older, newer):
    """One rerun request (a Streamlit BackMsg) standing for two: the newer one's query and widget values (every
    request carries the page's whole widget state, the trial widget's unacknowledged answers included), plus the
    older one's button clicks that the newer one does not repeat (a click is sent once). A rerun of one fragment
    only when both were reruns of the same fragment."""
    merged = type(newer)()
    merged.CopyFrom(newer)
    rerun, old = merged.rerun_script, older.rerun_script
    if old.fragment_id != rerun.fragment_id:
        rerun.fragment_id = ""  # the whole page reruns (its fragments with it)
    states = rerun.widget_states.widgets
    index = {state.id: i for i, state in enumerate(states)}
    for state in old.widget_states.widgets:
        if not _active_trigger(state):
            continue
        i = index.get(state.id)
        if i is None:
            states.append(state)
        elif not _active_trigger(states[i]):
            states[i].CopyFrom(state)
    return merged


def _cost(message) -> float:
    return 1 if message.rerun_script.fragment_id else WHOLE_PAGE_COST


@dataclass
class _Pending:
    message: object
    deliver: Callable[[object], None]
    participant: tuple[str, str] | None
    address: str


class RerunGate:
    """Budgets for the rerun requests browsers send (each costs a script run): per browser session, per
    participant across their tabs and per client address across its tabs. A request within all three is passed
    on at once. One beyond them waits, folded together with any that follow (`fold_reruns`), and goes on as a
    single rerun as soon as the budgets allow: a session sending too much gets slower, but loses no answer and
    takes nobody else's share. Runs on the server's event loop, like Streamlit's own message handling (no lock).
    `schedule(delay_s, callback)` runs a callback later on that loop."""

    def __init__(self, schedule: Callable[[float, Callable[[], None]], object], *,
                 per_session: Rate = RERUNS_PER_SESSION, per_participant: Rate = RERUNS_PER_PARTICIPANT,
                 address: Rate | None = None, clock: Callable[[], float] = time.monotonic,
                 refusals: RefusalLog | None = None) -> None:
        self._schedule, self._clock = schedule, clock
        self.refusals = refusals or REFUSALS
        self._sessions, self._participants = Buckets(per_session), Buckets(per_participant)
        self._addresses = Buckets(address or per_address(RERUNS_PER_ADDRESS))
        self._pending: dict[str, _Pending] = {}

    def offer(self, session: str, address: str, participant: tuple[str, str] | None, message,
              deliver: Callable[[object], None]) -> bool:
        """Pass `message` on through `deliver` now (True) or later (False)."""
        waiting = self._pending.get(session)
        if waiting is not None:  # its timer is set: ride along
            waiting.message = fold_reruns(waiting.message, message)
            waiting.deliver, waiting.participant, waiting.address = deliver, participant, address
            self.refusals.refused("rerun requests over budget (folded into a waiting one)")
            return False
        delay = self._wait(session, participant, address, _cost(message))
        if delay == 0:
            deliver(message)
            return True
        self._pending[session] = _Pending(message, deliver, participant, address)
        self.refusals.refused("rerun requests over budget (delayed)")
        self._schedule(delay, lambda: self._release(session))
        return False

    def _wait(self, session: str, participant: tuple[str, str] | None, address: str, cost: float) -> float:
        """0 after taking the request's cost from each budget it counts against, else the seconds until they
        all hold it (nothing taken)."""
        now = self._clock()
        buckets = [self._sessions(session, now), self._addresses(address, now)]
        if participant is not None:
            buckets.append(self._participants(participant, now))
        delay = max(bucket.wait(now, cost) for bucket in buckets)
        if delay == 0:
            for bucket in buckets:
                bucket.take(now, cost)
        return delay

    def _release(self, session: str) -> None:
        waiting = self._pending[session]
        delay = self._wait(session, waiting.participant, waiting.address, _cost(waiting.message))
        if delay > 0:  # another tab of the same participant or address took the token first
            self._schedule(delay, lambda: self._release(session))
            return
        del self._pending[session]
        try:
            waiting.deliver(waiting.message)
        except Exception as e:  # the session or the server is gone meanwhile
            self.refusals.refused("delayed reruns that could not be delivered", f"{type(e).__name__}: {e}")

    def waiting(self) -> int:
        return len(self._pending)


class MessageIntake:
    """How fast the server reads each websocket: every message (of any kind) takes a token from its connection's
    budget and its address's; past them, the connection is read later (the server's event loop waits for that
    connection only, and the sender's own network buffers fill). New connections per address are budgeted too."""

    def __init__(self, *, per_connection: Rate = MESSAGES_PER_CONNECTION, address: Rate | None = None,
                 connections: Rate | None = None, clock: Callable[[], float] = time.monotonic,
                 refusals: RefusalLog | None = None) -> None:
        self.per_connection, self._clock = per_connection, clock
        self.refusals = refusals or REFUSALS
        self._addresses = Buckets(address or per_address(MESSAGES_PER_ADDRESS))
        self._connections = Buckets(connections or per_address(CONNECTIONS_PER_ADDRESS))
        self._lock = threading.Lock()

    def connect(self, address: str) -> tuple[bool, TokenBucket]:
        """(admitted, the new connection's message budget)."""
        now = self._clock()
        with self._lock:
            bucket = self._connections(address, now)
            admitted = bucket.wait(now) == 0  # a refused one takes nothing: the address gets its rate back
            if admitted:
                bucket.take(now)
        if not admitted:
            self.refusals.refused("websocket connections over the per-address rate")
        return admitted, TokenBucket(self.per_connection, now)

    def delay(self, connection: TokenBucket, address: str) -> float:
        """Seconds to wait before handling the message just received on `connection` (0: at once)."""
        now = self._clock()
        with self._lock:
            delay = max(connection.take(now), self._addresses(address, now).take(now))
        if delay > 0:
            self.refusals.refused("websocket messages over the per-connection or per-address rate (read later)")
        return delay
