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
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

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
    The file gets the mode a new file gets under the umask (0o666 minus the umask).
    """
    return write_together({Path(path): write}, exclusive=exclusive)[0]


def write_together(writes: dict, *, exclusive: bool = False) -> list[Path]:
    """Write several files (``{path: write}``, see :func:`write_atomically`) so that all or none of them change.

    Every file is first written under its temporary name; only when all are
    written are they renamed, one after the other. When a write or a rename
    fails (or the process is interrupted), the files renamed so far are put
    back as they were: removed with ``exclusive``, else the earlier files
    restored; so the targets are all new or all as before. Returns the paths.
    """
    staged: list[tuple[str, Path, int]] = []  # (temporary, target, mode)
    try:
        for path, write in writes.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = _new_temporary(path)
            mode = stat.S_IMODE(os.stat(temporary).st_mode)
            staged.append((temporary, path, mode))
            with _naming(path):
                write(temporary)
                os.chmod(temporary, mode)  # a writer that made the file anew gets the umask's mode too
        _rename_all(staged, exclusive)
    finally:
        for temporary, _path, _mode in staged:
            if os.path.lexists(temporary):
                os.remove(temporary)
    return [path for _temporary, path, _mode in staged]


def _new_temporary(path: Path) -> str:
    """Create an empty ``<base>.tmp-XXXXXXXX<extension>`` beside ``path``, with the umask's mode; return its name."""
    base, extension = split_extension(path.name)
    for _attempt in range(100):
        candidate = os.path.join(path.parent, f"{base}{TEMPORARY_MARK}{secrets.token_hex(4)}{extension}")
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from error
        os.close(handle)
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextmanager
def _naming(path: Path):
    """Re-raise an ``OSError`` with an error number as one naming ``path`` (not a temporary)."""
    try:
        yield
    except OSError as error:
        if error.errno is None or error.filename == str(path):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def _rename_all(staged: list, exclusive: bool) -> None:
    """Rename every temporary to its target; on any failure undo the renames done so far (see write_together)."""
    if len(staged) == 1:  # one rename: it happens or not, nothing to undo
        temporary, path, _mode = staged[0]
        with _naming(path):
            _rename(temporary, path, exclusive)
        return
    done: list[tuple[Path, str | None]] = []  # (target, backup of its earlier file or None)
    try:
        for temporary, path, _mode in staged:
            backup = None if exclusive else _backup(path)
            try:
                with _naming(path):
                    _rename(temporary, path, exclusive)
            except BaseException:
                if _renamed(temporary, path):  # interrupted just after the rename
                    done.append((path, backup))
                elif backup is not None:
                    _remove_quietly(backup)
                raise
            done.append((path, backup))
    except BaseException:
        for path, backup in reversed(done):
            if backup is not None:
                os.replace(backup, path)
            else:
                _remove_quietly(path)
        raise
    for _path, backup in done:
        if backup is not None:
            _remove_quietly(backup)


def _rename(temporary: str, path: Path, exclusive: bool) -> None:
    if exclusive:
        _rename_without_replacing(temporary, path)
    else:
        os.replace(temporary, path)


def _renamed(temporary: str, path: Path) -> bool:
    """Whether ``temporary`` already lies at ``path`` (renamed, or hard-linked by an exclusive rename)."""
    if not os.path.lexists(temporary):
        return True
    try:
        return os.path.samefile(temporary, path)
    except OSError:
        return False


def _backup(path: Path) -> str | None:
    """A second name (a hard link, else a copy) for the file at ``path``, to restore it; None if there is none."""
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    backup = _new_temporary(path)
    os.remove(backup)
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(path, backup)
    return backup


def _remove_quietly(path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


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
