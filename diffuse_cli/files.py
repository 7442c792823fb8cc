"""Writing files so that a crash, a full disk or a second writer never leaves half of one:
a temporary name per writer beside the target, renamed over it; and a folder lock for the
read-modify-write of a shared report."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path


def give_plain_file_mode(path: Path) -> None:
    """Give `path` the permissions plain open() would (0666 less the umask): safetensors
    creates its files 0600 whatever the umask, which hides them from a group sharing the
    folder."""
    path.chmod(0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it, even
    for a moment, would apply to files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # elsewhere: the strict mask for the moment it takes
    os.umask(umask)
    return umask


def temporary_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A name beside `path` for writing it before the rename, one per writer: two processes
    writing the same file (parallel sweep jobs) must not write into one temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it: a crash or a full disk
    leaves the old file or the new one, never a part."""
    with replacing(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def replacing(path: Path):
    """Yield a temporary name beside `path` to write, renamed over `path` (after an fsync) when
    the block ends without an error, removed otherwise. It ends in `path`'s extension, which is
    how matplotlib and PIL pick the format."""
    tmp = temporary_sibling(path, f".tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_locked(folder: Path):
    """Hold an exclusive lock on `folder` for the block, with no lock file left behind: two
    evals writing one report (each reads it, adds its metrics and writes it back) would
    otherwise each keep only their own. A file system that cannot lock a folder (some network
    ones) runs the block unlocked."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
