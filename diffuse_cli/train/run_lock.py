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
        self.made_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.made_file = not self.path.exists()
        self.file = open(self.path, "a+")  # held open while the run trains
        self.refusal = None
        me = f"pid {os.getpid()} on {socket.gethostname()}"
        deadline = None
        while not self._try_lock():
            if self.file.closed:  # no locks on this file system: warned, go on unlocked
                return
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            elsewhere = not holder.endswith(f" on {socket.gethostname()}")
            if deadline is None and elsewhere:
                deadline = time.monotonic() + OTHER_HOST_WAIT
                print(
                    f"'{run_dir}' is locked by {holder}; waiting up to {OTHER_HOST_WAIT:.0f} s "
                    "in case that machine failed and its lock is expiring",
                    file=sys.stderr,
                )
            if deadline is None or time.monotonic() >= deadline:
                self.file.close()
                self.refusal = (
                    f"'{run_dir}' is being trained by {holder}; wait for it to end (a second "
                    "training would mix their checkpoints), or train into another run_dir"
                )
                return
            time.sleep(POLL)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(me + "\n")
        self.file.flush()

    def _try_lock(self) -> bool:
        """True when this process now holds the lock; a file system without locks closes the
        file after a warning."""
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                print(f"warning: cannot lock {self.path} ({err.strerror}): nothing stops a "
                      "second `diffuse train` of this run", file=sys.stderr)  # fmt: skip
                self.file.close()
            return False

    def release(self, tidy: bool = False) -> None:
        """Unlock; `tidy`: a refused start also removes the lock file and run folder it made."""
        if self.file.closed:
            return
        self.file.close()  # closing the only descriptor releases the flock
        if tidy and self.made_file:
            self.path.unlink(missing_ok=True)
            if self.made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
