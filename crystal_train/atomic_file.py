"""Crash-safe file writes: write beside the target, fsync, then rename over it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    A reader sees the old file or the complete new one, never a part; a failed or killed write
    leaves `path` as it was. The new file gets the usual umask mode, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the write itself succeeded
        _fsync_directory(path.parent)  # makes the rename survive a power cut


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if need be), waiting for any other holder, process or thread.

    With wait=False a lock held elsewhere raises BlockingIOError at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LockHeldError(RuntimeError):
    """Another process holds the lock this one was refused."""


@contextlib.contextmanager
def held_or_refused(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` while the block runs; LockHeldError(refusal) if another process holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path, wait=False))
        except BlockingIOError:
            raise LockHeldError(refusal) from None
        yield


def atomic_torch_save(obj, path: Path) -> None:
    """`torch.save(obj)` to `path` through atomic_write."""
    import torch  # here, so that the command-line tools' --help does not wait for torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def unfinished_writes(directory: Path, of: str = "*") -> list[Path]:
    """Temporary files that atomic_write left in `directory` when killed mid-write (of the file named `of`: all by default)."""
    return sorted(Path(directory).glob(f".{of}.*.tmp"))


def remove_unfinished_writes(directory: Path, of: str = "*") -> list[Path]:
    """Delete the temporaries that atomic_write left in `directory` when killed mid-write (of the file named `of`, under
    the lock its writers hold, where others' may be being written now); returns them."""
    leftovers = unfinished_writes(directory, of)
    for leftover in leftovers:
        leftover.unlink()
    return leftovers
