"""The organiser password: from the environment or Streamlit secrets, compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

PASSWORD_ENV = "STUDY_ADMIN_PASSWORD"
SECRET_KEY = "study_admin_password"
MIN_LENGTH = 8


class AdminNotConfigured(RuntimeError):
    pass


def configured_password(secrets: Mapping | None = None) -> str:
    """$STUDY_ADMIN_PASSWORD, else secrets['study_admin_password']; refuses missing or short ones."""
    password = os.environ.get(PASSWORD_ENV)
    if not password and secrets is not None:
        try:
            password = secrets.get(SECRET_KEY)
        except Exception:  # Streamlit raises when no secrets.toml exists at all
            password = None
    if not password:
        raise AdminNotConfigured(f"no organiser password set: set {PASSWORD_ENV} or '{SECRET_KEY}' in .streamlit/secrets.toml")
    if len(str(password)) < MIN_LENGTH:
        raise AdminNotConfigured(f"the organiser password must have at least {MIN_LENGTH} characters")
    return str(password)


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (digests first, so the length leaks nothing either)."""
    given_digest = hashlib.sha256(given.encode("utf-8")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(given_digest, expected_digest)
