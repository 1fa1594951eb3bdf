"""Atomic writes: how every file that matters is saved (checkpoints, prepared-data metadata, configs, logs'
plots, tokenizer files, Hugging Face folders).

The content goes to a temp file in the same folder, which then replaces the target in one rename: a kill at
any instant leaves the old file or the new one, never half of one. The file gets the permissions a plain
write would give it: those of the file it replaces, or for a new file 0666 less the process's umask
(a temp file is created private, 0600, which would hide checkpoints and data caches from teammates).

`check_writable` tells, before any work starts, whether a folder the work will write into can be written.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from gpt.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open `path` for writing in binary; it appears, whole, only if the block finishes without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _plain_write_mode(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _plain_write_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # The only portable way to read the umask is to set it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(folder: Path, setting: str) -> None:
    """A UserError naming the setting when `folder` cannot be created or written (nothing is created here)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{setting} {folder} cannot be created: {existing} is a file, not a folder")
    if existing == folder:
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"cannot write to {setting} {folder}: {e.strerror or e} (choose a writable "
                            f"--{setting})") from None
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise UserError(f"cannot create {setting} {folder}: {existing} is not writable ({why}); choose a writable "
                        f"--{setting}")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
