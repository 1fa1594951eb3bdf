"""Atomic writes: the target holds the old content or the new, never a part, and no temp file stays."""

import os

import pytest

from gpt.atomic import atomic_write, write_bytes, write_text


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
