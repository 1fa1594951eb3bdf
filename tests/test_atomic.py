"""Atomic writes (the target holds the old content or the new, never a part; no temp file stays) and writable checks."""

import os

import pytest

from gpt.atomic import atomic_write, check_writable, write_bytes, write_text
from gpt.errors import UserError


def test_new_content_replaces_old_whole(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")
    write_text(path, "new ☃")
    assert path.read_text(encoding="utf-8") == "new ☃" and os.listdir(tmp_path) == ["f.txt"]


def test_a_failure_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_nothing_appears_when_the_first_write_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "never.bin") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_check_writable_names_the_setting_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="out_dir .* is a file"):
        check_writable(tmp_path / "file" / "run", "out_dir")
    check_writable(tmp_path / "new" / "deeper", "data_dir")  # creatable: fine, and nothing made
    assert not (tmp_path / "new").exists()
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot be seen as root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="data_dir .* not writable"):
            check_writable(locked / "d", "data_dir")
        with pytest.raises(UserError, match="cannot write to data_dir"):
            check_writable(locked, "data_dir")
