"""Passwords for the organiser page and the researcher app: configuration, constant-time comparison, and a
lockout with backoff that lives on the server (in the study database, or in the process for the app gate),
so neither a reload nor a new browser session resets it. Failures count per client address (and per browser
session), so a stranger's guesses lock out that stranger, never the organiser at another address. Passwords are never logged or stored."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

from .db import write_transaction
from .design import utc_now

PASSWORD_ENV = "STUDY_ADMIN_PASSWORD"
SECRET_KEY = "study_admin_password"
APP_PASSWORD_ENV = "RANDMASK_APP_PASSWORD"
APP_SECRET_KEY = "app_password"
MIN_LENGTH = 12
MAX_FAILURES = 5  # wrong passwords before a lockout
LOCKOUT_S = 60.0  # first lockout; each further one doubles, up to MAX_LOCKOUT_S
MAX_LOCKOUT_S = 3600.0
ORGANISER_SCOPE = "organiser"
FORGET_AFTER_S = 24 * 3600.0


class AdminNotConfigured(RuntimeError):
    pass


def _from_config(env: str, secret_key: str, secrets: Mapping | None) -> str | None:
    password = os.environ.get(env)
    if not password and secrets is not None:
        try:
            password = secrets.get(secret_key)
        except Exception:  # Streamlit raises when no secrets.toml exists at all
            password = None
    return str(password) if password else None


def _checked(password: str | None, where: str) -> str:
    if not password:
        raise AdminNotConfigured(f"no password set: set {where}")
    if len(password.strip()) < MIN_LENGTH:
        raise AdminNotConfigured(f"the password must have at least {MIN_LENGTH} characters (spaces at either end not counted)")
    return password


def configured_password(secrets: Mapping | None = None) -> str:
    """$STUDY_ADMIN_PASSWORD, else secrets['study_admin_password']; refuses missing or short ones."""
    return _checked(_from_config(PASSWORD_ENV, SECRET_KEY, secrets),
                    f"{PASSWORD_ENV} or '{SECRET_KEY}' in .streamlit/secrets.toml")


def app_password(secrets: Mapping | None = None) -> str:
    """The researcher app's password: $RANDMASK_APP_PASSWORD (or secrets['app_password']), else the organiser's."""
    password = _from_config(APP_PASSWORD_ENV, APP_SECRET_KEY, secrets) or _from_config(PASSWORD_ENV, SECRET_KEY, secrets)
    return _checked(password, f"{APP_PASSWORD_ENV} (or {PASSWORD_ENV}) or '{APP_SECRET_KEY}' in .streamlit/secrets.toml")


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (digests first, so the length leaks nothing either)."""
    given_digest = hashlib.sha256(given.encode("utf-8")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(given_digest, expected_digest)


def is_loopback(address: str | None) -> bool:
    """True when a server bound to `address` is reachable from this machine only. None or '' means every
    interface (Streamlit's default), so not loopback."""
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Attempt:
    ok: bool
    locked_for_s: float  # > 0: locked (now, or by this failure); the password was not compared while locked


def _after_failure(failures: int, lockouts: int, now: float) -> tuple[int, int, float]:
    failures += 1
    if failures < MAX_FAILURES:
        return failures, lockouts, 0.0
    lockouts += 1
    return 0, lockouts, now + min(LOCKOUT_S * 2 ** (lockouts - 1), MAX_LOCKOUT_S)


def utc_now_minus(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def client_keys(address: str | None, session_id: str | None = None) -> list[str]:
    """What failures are counted against: the client's address and, when known, its browser session. Guesses
    from one address never lock another one out; a session is throttled even where addresses are shared."""
    keys = [f"address:{address or 'unknown'}"]
    if session_id:
        keys.append(f"session:{session_id}")
    return keys


def _scoped(scope: str, keys: list[str] | None) -> list[str]:
    return [f"{scope}|{key}" for key in (keys or ["address:unknown"])]


def check_password(db: sqlite_utils.Database, given: str, expected: str, scope: str = ORGANISER_SCOPE,
                   keys: list[str] | None = None) -> Attempt:
    """Compare `given` with `expected` unless one of this client's `keys` (client_keys) is locked for `scope`;
    count the failure against each key, in the database (persistent, server-side)."""
    now = time.time()
    scoped = _scoped(scope, keys)
    with write_transaction(db):
        states = {}
        for key in scoped:
            row = db.execute("SELECT failures, lockouts, locked_until FROM auth_failures WHERE scope = ?", [key]).fetchone()
            states[key] = row if row else (0, 0, 0.0)
        locked_until = max(state[2] for state in states.values())
        if locked_until > now:
            return Attempt(False, locked_until - now)
        if password_matches(given, expected):
            db.execute(f"DELETE FROM auth_failures WHERE scope IN ({', '.join('?' * len(scoped))})", scoped)
            return Attempt(True, 0.0)
        stamp = utc_now()
        for key, (failures, lockouts, until) in states.items():
            failures, lockouts, until = _after_failure(failures, lockouts, now)
            locked_until = max(locked_until, until)
            db.execute("INSERT INTO auth_failures (scope, failures, lockouts, locked_until, updated_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (scope) DO UPDATE SET failures = excluded.failures, lockouts = excluded.lockouts, "
                       "locked_until = excluded.locked_until, updated_at = excluded.updated_at",
                       [key, failures, lockouts, until, stamp])
        # forget clients quiet for a day (their backoff has long run out), so the table stays small
        db.execute("DELETE FROM auth_failures WHERE locked_until < ? AND updated_at < ?",
                   [now - FORGET_AFTER_S, utc_now_minus(FORGET_AFTER_S)])
    return Attempt(False, max(0.0, locked_until - now))


def locked_for(db: sqlite_utils.Database, scope: str = ORGANISER_SCOPE, keys: list[str] | None = None) -> float:
    """Seconds left on the longest lockout of this client's keys for `scope` (0 when not locked)."""
    scoped = _scoped(scope, keys)
    row = db.execute(f"SELECT max(locked_until) FROM auth_failures WHERE scope IN ({', '.join('?' * len(scoped))})",
                     scoped).fetchone()
    return max(0.0, row[0] - time.time()) if row and row[0] is not None else 0.0


class ProcessLockout:
    """The same policy for the researcher app's gate, per client key, kept in the server process (shared by every
    session): that gate must work without a study database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[int, int, float, float]] = {}  # key -> failures, lockouts, locked until, last seen

    def _state(self, key: str) -> tuple[int, int, float, float]:
        return self._states.get(key, (0, 0, 0.0, 0.0))

    def check(self, given: str, expected: str, keys: list[str] | None = None) -> Attempt:
        now = time.time()
        keys = keys or ["address:unknown"]
        with self._lock:
            locked_until = max(self._state(key)[2] for key in keys)
            if locked_until > now:
                return Attempt(False, locked_until - now)
            if password_matches(given, expected):
                for key in keys:
                    self._states.pop(key, None)
                return Attempt(True, 0.0)
            for key in keys:
                failures, lockouts, _, _ = self._state(key)
                failures, lockouts, until = _after_failure(failures, lockouts, now)
                self._states[key] = (failures, lockouts, until, now)
                locked_until = max(locked_until, until)
            for key in [k for k, state in self._states.items() if max(state[2], state[3]) < now - FORGET_AFTER_S]:
                del self._states[key]  # quiet for a day: forgotten, so the table stays small
            return Attempt(False, max(0.0, locked_until - now))

    def locked_for(self, keys: list[str] | None = None) -> float:
        with self._lock:
            until = max(self._state(key)[2] for key in keys or ["address:unknown"])
            return max(0.0, until - time.time())
