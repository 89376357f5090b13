"""Atomic writes: the file appears whole or not at all, a failed write keeps the old file."""

import os
import stat

import pytest

from BreastUSSegmentLib.fileio import SHARED_FILE_MODE, write_atomically, write_text_atomically


def test_write_creates_the_folder_and_a_shared_file(tmp_path):
    path = write_text_atomically(tmp_path / "new" / "card.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == SHARED_FILE_MODE
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
