"""The advisory lock a process holds on a run folder while it works in it, so that two
processes never train into, resume, or clear the same run at once.

``hold_run_folder(folder)`` takes an exclusive ``flock`` on ``folder/.cyclegan.lock`` (creating
the folder if needed) and writes who holds it (PID, host, start time, command line) into the
file; a second process gets a ``CycleGANError`` naming the holder, at once, without waiting.
The kernel releases the lock when the holder exits, however it exits (``kill -9`` included), so
a lock is never stale. Within one process the lock is re-entrant (``cyclegan demo`` clears its
folder, then trains in it). A folder that the lock created and that holds nothing else when it
is released (a run refused before it wrote anything) is removed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cyclegan.errors import CycleGANError

__all__ = ["LOCK_NAME", "hold_run_folder", "holder_of"]

LOCK_NAME = ".cyclegan.lock"

try:
    import fcntl
except ImportError:  # not a POSIX system: no advisory locks to take
    fcntl = None  # type: ignore[assignment]

# Folders this process holds, with how many times: the lock is re-entrant within a process.
_HELD: dict[Path, int] = {}


def holder_of(folder: Path) -> str:
    """Who holds (or last held) the lock of ``folder``, as the lock file says."""
    try:
        info = json.loads((folder / LOCK_NAME).read_text(encoding="utf-8"))
        return (f"process {info['pid']} on {info['host']}, since {info['started']} "
                f"({' '.join(info['command'])[:200]})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its name yet)"


def _acquire(folder: Path) -> int:
    """The open, locked lock file of ``folder``; a CycleGANError naming the holder if it is taken."""
    path = folder / LOCK_NAME
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CycleGANError(
                f"run folder {folder} is in use by {holder_of(folder)}: wait until it ends or stop it, or choose "
                "another --output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # removed by the previous holder between our open and our lock
            same = False
        if same:
            return fd
        os.close(fd)
    raise CycleGANError(f"run folder {folder}: could not take its lock {path}; try again")


def _record(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8", "backslashreplace"), 0)


@contextlib.contextmanager
def hold_run_folder(folder: str | os.PathLike[str], flag: str = "--output") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; ``flag`` is the
    option that named the folder, for the messages."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    if folder.exists() and not folder.is_dir():
        raise CycleGANError(f"{flag} {folder} is a file, not a folder: choose a folder for the run")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CycleGANError(f"{flag} {folder}: cannot create the folder ({exc.strerror or exc}); choose a place "
                            "you can write to") from None
    if fcntl is None:
        fd = None
    else:
        try:
            fd = _acquire(folder)
        except OSError as exc:
            raise CycleGANError(f"{flag} {folder}: cannot write in the folder ({exc.strerror or exc}); choose a "
                                "place you can write to") from None
        _record(fd)
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        if fd is not None:
            os.close(fd)
