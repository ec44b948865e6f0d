"""Shared by the bad-input tests: run a CLI in process, check its refusal, and prove nothing was written."""
from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

SQLITE_COMPANIONS = ("-wal", "-shm")


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under root (root included): kind, size, mtime and, for regular files, a hash of the bytes.
    FIFOs and devices are never opened (reading a FIFO would block)."""
    state = {}
    paths = [root, *root.rglob("*")] if root.exists() else []
    for path in paths:
        info = os.lstat(path)
        digest = ""
        if stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns, digest)
    return state


def assert_unchanged(before: dict[str, tuple], after: dict[str, tuple], *, sqlite_readers: bool = False) -> None:
    """Same entries with the same bytes and mtimes. With `sqlite_readers`, a read-only SQLite connection to a
    WAL database may leave its shared-memory index and an EMPTY write-ahead log beside the file."""
    if sqlite_readers:
        extra = {k: v for k, v in after.items() if k not in before and k.endswith(SQLITE_COMPANIONS)}
        assert all(v[1] == 0 for k, v in extra.items() if k.endswith("-wal")), extra
        after = {k: v for k, v in after.items() if k not in extra}
        for folder in {str(Path(k).parent) for k in extra}:  # adding the companions touched their folder
            after[folder] = (*after[folder][:2], before[folder][2], *after[folder][3:])
    assert after.keys() == before.keys(), (sorted(set(after) ^ set(before)))
    changed = [k for k in before if k != "." and before[k] != after[k]]
    assert not changed, changed


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """A CLI's main() in process; an uncaught exception (a crash) fails the test by propagating."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str = "", *, codes: Sequence[int] = (2,)) -> str:
    """Refused: a non-zero exit, exactly one stderr line `error: ...` (warnings aside), no traceback."""
    assert code in codes, (code, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_one_line_exception(exc: BaseException, types: tuple[type, ...], fragment: str = "") -> None:
    """The project's own exception type, one line of message, naming what is wrong."""
    assert isinstance(exc, types), type(exc)
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, message
    assert fragment in message, (fragment, message)
