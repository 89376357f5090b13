"""Atomic writes: the file appears whole or not at all, a failed write keeps the old file."""

import errno
import os
import stat
from pathlib import Path

import pytest

from BreastUSSegmentLib.fileio import split_extension, write_atomically, write_text_atomically, write_together


def current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def test_write_creates_the_folder_and_a_shared_file(tmp_path):
    path = write_text_atomically(tmp_path / "new" / "card.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~current_umask()
    assert os.listdir(path.parent) == ["card.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    def fail(temporary):
        with open(temporary, "w") as stream:
            stream.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


@pytest.mark.parametrize("name, expected", [
    ("1.2.826.0.1.3680043.101.dcm", ("1.2.826.0.1.3680043.101", ".dcm")),
    ("scan.NII.GZ", ("scan", ".NII.GZ")),
    ("frame.png", ("frame", ".png")),
    ("IM0001", ("IM0001", "")),
    (".hidden", (".hidden", "")),
    ("trailing.", ("trailing.", "")),
])
def test_split_extension_keeps_all_but_the_last_extension(name, expected):
    assert split_extension(name) == expected


def test_the_temporary_keeps_the_extension_for_writers_that_choose_the_format_by_it(tmp_path):
    seen = []
    write_atomically(tmp_path / "x_mask.nii.gz", lambda temporary: (seen.append(temporary), open(temporary, "w").close()))
    assert seen[0].endswith(".nii.gz") and os.path.dirname(seen[0]) == str(tmp_path)


def test_exclusive_write_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "mask.nrrd"
    path.write_text("earlier result")
    with pytest.raises(FileExistsError) as error:
        write_atomically(path, lambda temporary: open(temporary, "w").write("new"), exclusive=True)
    assert error.value.filename == str(path)
    assert path.read_text() == "earlier result" and os.listdir(tmp_path) == ["mask.nrrd"]


def test_exclusive_write_loses_cleanly_to_a_file_created_meanwhile(tmp_path):
    """Another process creating the file between our check and our rename wins; we fail, nothing is replaced."""
    path = tmp_path / "mask.nrrd"

    def write_while_another_run_finishes(temporary):
        with open(temporary, "w") as stream:
            stream.write("ours")
        path.write_text("the other run's")

    with pytest.raises(FileExistsError):
        write_atomically(path, write_while_another_run_finishes, exclusive=True)
    assert path.read_text() == "the other run's" and os.listdir(tmp_path) == ["mask.nrrd"]
    write_atomically(tmp_path / "new.nrrd", lambda temporary: open(temporary, "w").write("new"), exclusive=True)
    assert (tmp_path / "new.nrrd").read_text() == "new"
    assert stat.S_IMODE(os.stat(tmp_path / "new.nrrd").st_mode) == 0o666 & ~current_umask()


def test_an_os_error_names_the_target_not_the_temporary(tmp_path):
    (tmp_path / "overlay.png").mkdir()  # a folder where the file should go
    with pytest.raises(IsADirectoryError) as error:
        write_atomically(tmp_path / "overlay.png", lambda temporary: open(temporary, "w").close())
    assert error.value.filename == str(tmp_path / "overlay.png") and ".tmp-" not in str(error.value)
    assert os.listdir(tmp_path) == ["overlay.png"]


@pytest.mark.parametrize("umask", [0o077, 0o002, 0o022])
def test_a_written_file_has_the_mode_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_text_atomically(tmp_path / "report.json", "{}\n")
        replaced = write_text_atomically(path, "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(replaced).st_mode) == 0o666 & ~umask


def test_files_written_together_change_all_or_none(tmp_path):
    """A failure after some files are written (a full disk on the third) keeps every earlier file as it was."""
    paths = [tmp_path / name for name in ("mask.nrrd", "probability.nrrd", "overlay.png")]
    for path in paths:
        path.write_text(f"old {path.name}")

    def disk_full(temporary):
        raise OSError(errno.ENOSPC, "No space left on device", temporary)

    writes = {paths[0]: lambda t: Path(t).write_text("new"), paths[1]: lambda t: Path(t).write_text("new"),
              paths[2]: disk_full}
    with pytest.raises(OSError) as raised:
        write_together(writes)
    assert raised.value.filename == str(paths[2]) and raised.value.errno == errno.ENOSPC
    assert [path.read_text() for path in paths] == [f"old {path.name}" for path in paths]
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in paths)
    # A rename that fails after others were done (a folder in the way) puts the replaced files back.
    paths[2].unlink()
    paths[2].mkdir()
    with pytest.raises(IsADirectoryError):
        write_together({path: (lambda t: Path(t).write_text("new")) for path in paths})
    assert [path.read_text() for path in paths[:2]] == [f"old {path.name}" for path in paths[:2]]
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in paths)
    write_together({path: (lambda t: Path(t).write_text("new")) for path in paths[:2]})
    assert [path.read_text() for path in paths[:2]] == ["new", "new"]
    # Exclusive: a file that exists stops the set, and the files this call created are removed again.
    fresh = [tmp_path / "a.nrrd", tmp_path / "b.nrrd"]
    fresh[1].write_text("someone else's")
    with pytest.raises(FileExistsError):
        write_together({path: (lambda t: Path(t).write_text("new")) for path in fresh}, exclusive=True)
    assert not fresh[0].exists() and fresh[1].read_text() == "someone else's"
