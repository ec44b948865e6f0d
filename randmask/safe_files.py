"""Reading small files from folders we do not trust (checkpoint folders, adversarial sets).

Standard library only, so that the human study can use it without importing torch.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable


def read_regular_file(path: str | os.PathLike, limit: int,
                      error: Callable[[str], Exception] = ValueError) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes. Devices, FIFOs and sockets
    are refused without blocking (O_NONBLOCK) and the size is checked before anything is read; a refusal
    raises `error(message)`. An OSError from opening or reading is the caller's to word."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a regular file")
        if info.st_size > limit:
            raise error(f"{path} is {info.st_size:,} bytes; the limit is {limit:,}")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        data = file.read(limit + 1)
    if len(data) > limit:  # it grew while we read it
        raise error(f"{path} is over {limit:,} bytes")
    return data
