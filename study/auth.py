"""Passwords for the organiser page and the researcher app: configuration, constant-time comparison, and a
lockout with backoff that lives on the server (in the study database, or in the process for the app gate),
so neither a reload nor a new browser session resets it. Passwords are never logged or stored."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

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


def check_password(db: sqlite_utils.Database, given: str, expected: str, scope: str = ORGANISER_SCOPE) -> Attempt:
    """Compare `given` with `expected` unless `scope` is locked; count failures and lock in the database."""
    now = time.time()
    with write_transaction(db):
        row = db.execute("SELECT failures, lockouts, locked_until FROM auth_failures WHERE scope = ?", [scope]).fetchone()
        failures, lockouts, locked_until = row if row else (0, 0, 0.0)
        if locked_until > now:
            return Attempt(False, locked_until - now)
        if password_matches(given, expected):
            db.execute("DELETE FROM auth_failures WHERE scope = ?", [scope])
            return Attempt(True, 0.0)
        failures, lockouts, locked_until = _after_failure(failures, lockouts, now)
        db.execute("INSERT INTO auth_failures (scope, failures, lockouts, locked_until, updated_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (scope) DO UPDATE SET failures = excluded.failures, lockouts = excluded.lockouts, "
                   "locked_until = excluded.locked_until, updated_at = excluded.updated_at",
                   [scope, failures, lockouts, locked_until, utc_now()])
    return Attempt(False, max(0.0, locked_until - now))


def locked_for(db: sqlite_utils.Database, scope: str = ORGANISER_SCOPE) -> float:
    """Seconds left on the lockout of `scope` (0 when not locked)."""
    row = db.execute("SELECT locked_until FROM auth_failures WHERE scope = ?", [scope]).fetchone()
    return max(0.0, row[0] - time.time()) if row else 0.0


class ProcessLockout:
    """The same policy for the researcher app's gate, kept in the server process (shared by every session):
    that gate must work without a study database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = self._lockouts = 0
        self._locked_until = 0.0

    def check(self, given: str, expected: str) -> Attempt:
        now = time.time()
        with self._lock:
            if self._locked_until > now:
                return Attempt(False, self._locked_until - now)
            if password_matches(given, expected):
                self._failures = self._lockouts = 0
                return Attempt(True, 0.0)
            self._failures, self._lockouts, self._locked_until = _after_failure(self._failures, self._lockouts, now)
            return Attempt(False, max(0.0, self._locked_until - now))

    def locked_for(self) -> float:
        with self._lock:
            return max(0.0, self._locked_until - time.time())
