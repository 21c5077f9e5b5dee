"""One writer per output folder: an advisory lock, and cleanup of what a killed writer left.

Two ``mechscope train`` processes on one ``--out`` would interleave their metrics and one SAE
would be silently lost. A writer therefore holds an exclusive ``flock`` on ``<folder>/.mechscope.lock``
for as long as it writes; a second writer fails at once with a message naming the folder and the
holder (pid and command, written into the lock file). ``flock`` locks belong to an open file
description and are released by the kernel when the process dies, so a ``kill -9`` never leaves a
stale lock; the lock file itself stays (removing it would race with a waiting writer).

A writer killed between creating a temporary file and renaming it (`mechscope.files`) leaves
``<name>.<8 random characters>.tmp`` behind; whoever next takes the lock owns the folder, so it
removes those orphans.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mechscope.files import TMP_SUFFIX

LOCK_NAME = ".mechscope.lock"
# tempfile.mkstemp(prefix=name + ".", suffix=".tmp") draws 8 characters from [a-z0-9_]
_ORPHAN = re.compile(r"^.+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")


class FolderBusyError(ValueError):
    """Another process is writing the folder."""


def writable_dir(path: "str | os.PathLike", flag: str = "--out") -> Path:
    """Create folder ``path`` (and parents) and prove it writable, or fail naming ``flag`` and the
    path: called before any expensive work, so a bad ``--out`` costs nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {p} is not a writable folder ({e.strerror or e})") from None
    return p


def clean_orphans(folder: "str | os.PathLike") -> list[Path]:
    """Remove temporary files of `mechscope.files` writers below ``folder``; returns them.

    Only safe while holding the folder's lock (no live writer of ours is filling one)."""
    removed = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            if _ORPHAN.match(n):
                p = Path(dirpath) / n
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


@contextmanager
def folder_lock(folder: "str | os.PathLike", flag: str = "--out", what: str = "mechscope") -> Iterator[Path]:
    """Hold the folder's writer lock (creating the folder), cleaning orphan temporaries first.

    Raises `FolderBusyError` at once when another process holds it."""
    created = not Path(folder).exists()
    folder = writable_dir(folder, flag)
    f = open(folder / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderBusyError(f"{flag} {folder} is being written by another mechscope process "
                                  f"({holder}); wait for it to finish or choose another {flag}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, {what}\n")
        f.flush()
        clean_orphans(folder)
        yield folder
    finally:
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            # a writer that failed before writing anything leaves no trace of itself
            os.unlink(folder / LOCK_NAME)
            f.close()
            with contextlib.suppress(OSError):
                folder.rmdir()
        f.close()  # releases the lock
