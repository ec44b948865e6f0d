"""User-facing errors: each says what is wrong in one line (the CLI prints it without a traceback)."""


class RandmaskError(ValueError):
    """Base class for every error caused by user input (notation, files, settings)."""


class NotationError(RandmaskError):
    """A model or attack name that does not parse."""


class CheckpointError(RandmaskError):
    """A checkpoint folder that is missing, corrupt, or does not match its config."""


class DataError(RandmaskError):
    """A data set that cannot be found or read."""


def at_least_one(option: str, value: int | None) -> None:
    """A count option (`--n`, `--threads`, ...) below 1 is the user's error: one line, before any work."""
    if value is not None and value < 1:
        raise RandmaskError(f"{option} must be at least 1, got {value}")
