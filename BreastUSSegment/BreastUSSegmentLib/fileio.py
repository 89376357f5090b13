"""Writing files atomically: a reader never sees a half-written file, a failed write leaves the old one.

Every output of the project (images, weights, cards, checkpoints, reports) is
written here: first to a temporary file ``<base>.tmp-XXXXXXXX<extension>`` in
the target's folder, which is then renamed to the target. The temporary keeps
the target's extension, so writers that pick the format from the file name
(SimpleITK, Pillow) write the right one.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

SHARED_FILE_MODE = 0o644  # mkstemp creates owner-only files; outputs are meant to be shared
TEMPORARY_MARK = ".tmp-"
DOUBLE_EXTENSIONS = (".nii.gz",)


def split_extension(name: str) -> tuple[str, str]:
    """``name`` as ``(base, extension)``: only the last extension, with ``.nii.gz`` kept whole.

    ``"1.2.840.5.dcm"`` -> ``("1.2.840.5", ".dcm")``, ``"scan.nii.gz"`` -> ``("scan", ".nii.gz")``,
    ``"IM0001"`` and ``".hidden"`` -> ``(name, "")``.
    """
    for extension in DOUBLE_EXTENSIONS:
        if name.lower().endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], name[-len(extension):]
    base, dot, extension = name.rpartition(".")
    if not dot or not base or not extension:
        return name, ""
    return base, dot + extension


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], *, exclusive: bool = False) -> Path:
    """Call ``write(temporary_path)``, then rename that file to ``path``; return ``path``.

    The temporary file lies in the same folder (created if missing), so the
    rename is atomic; it is removed when ``write`` fails. With ``exclusive``
    an existing ``path`` is never replaced: ``FileExistsError`` is raised
    instead, also when another process creates ``path`` during the write.
    An ``OSError`` with an error number (a full disk, a folder in the way) names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base, extension = split_extension(path.name)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=base + TEMPORARY_MARK, suffix=extension)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, SHARED_FILE_MODE)
        if exclusive:
            _rename_without_replacing(temporary, path)
        else:
            os.replace(temporary, path)
    except OSError as error:
        if error.errno is None or error.filename == str(path):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error  # name the target, not the temporary
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _rename_without_replacing(temporary: str, path: Path) -> None:
    """Give ``temporary`` the name ``path`` unless ``path`` exists (a hard link, so the check is atomic)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "the file already exists", str(path)) from None
    except OSError:  # a file system without hard links (FAT, some network shares): check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "the file already exists", str(path)) from None
        os.replace(temporary, path)
    # after a successful link, write_atomically removes the temporary name


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`write_atomically`."""
    return write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of earlier writes to ``path`` whose process was killed before it could remove them.

    Only a caller that is the single writer of ``path`` may delete them: in a
    folder shared by several processes they may belong to a write in progress.
    """
    path = Path(path)
    base, extension = split_extension(path.name)
    pattern = glob.escape(base) + TEMPORARY_MARK + "*" + glob.escape(extension)
    return sorted(path.parent.glob(pattern))


def sha256_of_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
