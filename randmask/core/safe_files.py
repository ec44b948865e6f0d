"""Reading small files from folders we do not trust (checkpoint folders, adversarial sets), and writing every
command's output whole or not at all, never over an input.

Standard library only, so that the human study can use it without importing torch.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path


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


# ------------------------------------------------------------------------------------------ outputs
class OutputError(ValueError):
    """An output that cannot be written without losing something; the message is one line."""


def _free(path: Path) -> bool:
    """Nothing to lose at `path`: it does not exist, or it is an empty folder (not a link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISDIR(info.st_mode) and not any(os.scandir(path))


def check_output(path: str | os.PathLike, *, folder: bool, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), replaceable: Callable[[Path], bool] | None = None,
                 kind: str = "", option: str = "--out") -> Path:
    """Refuse, before any work, an output that would lose something: an existing one without `overwrite`; a
    link, FIFO, device or socket; a file where a folder goes or the reverse; a folder `replaceable` says is not
    of this kind (so `--overwrite` never empties an unrelated folder); and, even with `overwrite`, the same
    path as an input, a path inside an input or a folder holding one. Returns the path."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"{option} {path} names no new file or folder")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    target = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target) or (
                os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)):
            raise OutputError(f"{option} {path} would overwrite an input ({given}); choose another {option}")
    if info is not None and not _free(path):
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            raise OutputError(f"{option} {path} is a symbolic link; give the real path or another name")
        if folder and not stat.S_ISDIR(mode):
            raise OutputError(f"{option} {path} exists and is not a folder")
        if not folder and not stat.S_ISREG(mode):
            raise OutputError(f"{option} {path} exists and is not a regular file")
        if not overwrite:
            raise OutputError(f"{path} already exists; choose another {option} or pass --overwrite")
        if replaceable is not None and not replaceable(path):
            raise OutputError(f"{path} is not {kind or 'an earlier output of this command'}; --overwrite replaces "
                              f"only that: choose another {option}")
    return path


def existing_paths(values: Iterable[object]) -> list[Path]:
    """The values (strings, paths, or lists of them, as a command line gives them) that name existing files or
    folders: the inputs an output must keep away from."""
    found = []
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item) and os.path.lexists(item):
                found.append(Path(item))
    return found


def _unique(parent: Path, name: str, make: Callable[[Path], None]) -> Path:
    """A new entry `.name.<random>.tmp` beside the output, made by `make`, which must fail if anything (even a
    dangling symbolic link) is already there (O_EXCL, mkdir)."""
    while True:
        candidate = parent / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue


def _make_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a new temporary file beside `path` and rename it over `path`: a reader sees the old file or
    the new one, never half of one, and a failed write leaves no temporary behind."""
    path = Path(path)
    tmp = _unique(path.parent, path.name, _make_file)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Output:
    """One output of a command, written whole or not at all.

        out = Output(args.out, folder=False, overwrite=args.overwrite, inputs=[...])   # checks, before any work
        with out as tmp:        # a new, empty file or folder beside the output, under a unique name
            write(tmp)          # then renamed into place; on any error nothing is left (folders made for it too)

    `commit()` inside the block moves the output into place early (for a step that needs it there, such as a
    study reading its sets); an error after it still undoes everything, bringing back a replaced output."""

    def __init__(self, path: str | os.PathLike, *, folder: bool, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), replaceable: Callable[[Path], bool] | None = None,
                 kind: str = "", option: str = "--out") -> None:
        self.path = check_output(path, folder=folder, overwrite=overwrite, inputs=inputs, replaceable=replaceable,
                                 kind=kind, option=option)
        self.folder, self.overwrite, self.option = folder, overwrite, option
        self.tmp: Path | None = None
        self.old: Path | None = None  # the replaced output, kept until the block succeeds
        self.made: list[Path] = []
        self.committed = False

    def __enter__(self) -> Path:
        parent = self.path.parent
        self.made = [p for p in (parent, *parent.parents) if not os.path.lexists(p)]
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _unique(parent, self.path.name, os.mkdir if self.folder else _make_file)
        return self.tmp

    def commit(self) -> None:
        """Move the finished output into place (once)."""
        if self.committed or self.tmp is None:
            return
        if os.path.lexists(self.path):
            if not self.overwrite and not (self.folder and _free(self.path)):
                raise OutputError(f"{self.path} appeared while this command ran; nothing was written")
            self.old = _unique(self.path.parent, self.path.name + ".old", self._move_aside)
        try:
            os.rename(self.tmp, self.path)
        except BaseException:
            if self.old is not None:
                os.rename(self.old, self.path)
                self.old = None
            raise
        self.committed = True

    def _move_aside(self, place: Path) -> None:
        if os.path.lexists(place):  # rename() would replace an empty folder there
            raise FileExistsError(place)
        os.rename(self.path, place)

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            try:
                self.commit()
            except BaseException:
                self._undo()
                raise
            if self.old is not None:
                _remove(self.old)
            return
        self._undo()

    def _undo(self) -> None:
        if self.committed:
            _remove(self.path)
            if self.old is not None:
                os.rename(self.old, self.path)
        elif self.tmp is not None:
            _remove(self.tmp)
        for folder in self.made:  # innermost first; only those made here, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
