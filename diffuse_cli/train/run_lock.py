"""One writer per run directory: the main process of a `diffuse train` holds an exclusive lock
on `<run_dir>/.lock` while it trains.

Two trainings of one run (a command started twice, a resume while the run still trains) would
interleave their checkpoints and metrics.jsonl lines, and one's save could remove the other's.
flock is released by the kernel when the process ends, however it ends, so a killed or requeued
run is never locked out. Only a lock held from another machine is waited for, a few minutes: a
network file system keeps the lock of a machine that failed until its lease runs out, and Slurm
may requeue the job on another node sooner. A file system without locks gets a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"
OTHER_HOST_WAIT = 180.0  # seconds: NFSv4 leases last 90 s by default
POLL = 5.0


class RunLock:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.made_file = not self.path.exists()
        stat = run_dir.stat()
        self.dir_times = (stat.st_atime_ns, stat.st_mtime_ns)  # put back by a tidy release
        self.file = None
        self.refusal = None
        host = socket.gethostname()
        deadline = None
        while not self._lock():
            if self.file is None:  # no locks on this file system: warned, go on unlocked
                return
            self.file.seek(0)
            holder = self.file.read().strip()
            self.file.close()
            if not holder:  # taken a moment ago, its name not yet written: this machine
                holder = f"another process on {host}"
            if deadline is None and not holder.endswith(f" on {host}"):
                deadline = time.monotonic() + OTHER_HOST_WAIT
                print(
                    f"'{run_dir}' is locked by {holder}; waiting up to {OTHER_HOST_WAIT:.0f} s "
                    "in case that machine failed and its lock is expiring",
                    file=sys.stderr,
                )
            if deadline is None or time.monotonic() >= deadline:
                self.file = None
                self.refusal = (
                    f"'{run_dir}' is being trained by {holder}; wait for it to end (a second "
                    "training would mix their checkpoints), or train into another run_dir"
                )
                return
            time.sleep(POLL)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {host}\n")
        self.file.flush()

    def _lock(self) -> bool:
        """True when this process holds the lock of the file now at self.path (a lock taken on
        a file another start has just removed does not count). On a file system without
        locks, warn and leave self.file None."""
        while True:
            self.file = open(self.path, "a+")  # held open while the run trains
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                self.file.close()
                self.file = None
                print(f"warning: cannot lock {self.path} ({err.strerror}): nothing stops a "
                      "second `diffuse train` of this run", file=sys.stderr)  # fmt: skip
                return False
            try:
                if os.fstat(self.file.fileno()).st_ino == self.path.stat().st_ino:
                    return True
            except FileNotFoundError:
                pass
            self.file.close()  # that file was removed meanwhile: lock the new one

    def release(self, tidy: bool = False) -> None:
        """Unlock; `tidy`: a refused start also removes the lock file and the folders it made,
        and gives a folder it did not make its old times back (the CLI tells a folder Hydra
        made from the user's own by its modification time)."""
        if self.file is None or self.file.closed:
            return
        if tidy and self.made_file:
            self.path.unlink(missing_ok=True)  # while still locked: no one can lock it anew
        self.file.close()  # closing the only descriptor releases the flock
        if not (tidy and self.made_file):
            return
        for folder in self.made:
            if any(folder.iterdir()):
                return
            folder.rmdir()
        if not self.made:
            os.utime(self.run_dir, ns=self.dir_times)
