"""Atomic file writes: the one implementation every package uses.

A writer gets a temporary path in the target's folder, fills it, and the file is renamed over the
target (``os.replace`` is atomic on POSIX), so a crash leaves either the old or the new file and
never half of one. The result has the permissions an ordinary ``open(..., "w")`` would give under
the user's umask (``0644`` under the usual ``022``), not ``mkstemp``'s private ``0600``: SAE
folders, browsers and caches are meant to be read by a web server or a colleague.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: "str | Path") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, numpy memmaps). On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: "str | Path", data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: "str | Path", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent folders."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: "str | Path", obj: Any, indent: int | None = None) -> Path:
    """Write ``obj`` as strict JSON (no bare NaN / Infinity) atomically."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return write_text(path, text + ("\n" if indent is not None else ""))
