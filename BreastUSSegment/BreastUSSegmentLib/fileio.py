"""Writing files atomically: a reader never sees a half-written file, a failed write leaves the old one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

SHARED_FILE_MODE = 0o644  # mkstemp creates owner-only files; outputs are meant to be shared


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then rename that file over ``path``; return ``path``.

    The temporary file lies in the same folder (created if missing), so the
    rename is atomic; it is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, SHARED_FILE_MODE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`write_atomically`."""
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text))
