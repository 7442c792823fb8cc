"""One writer per run directory: the main process of a `diffuse train` holds an exclusive lock
on `<run_dir>/.lock` while it trains.

Two trainings of one run (a command started twice, a resume while the run still trains) would
interleave their checkpoints and metrics.jsonl lines, and one's save could remove the other's.
flock is released by the kernel when the process ends, however it ends, so a killed or requeued
run is never locked out. A file system without locks (some Lustre mounts) gets a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from pathlib import Path

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.made_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.made_file = not self.path.exists()
        self.file = open(self.path, "a+")  # held open while the run trains
        self.refusal = None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                print(f"warning: cannot lock {self.path} ({err.strerror}): nothing stops a "
                      "second `diffuse train` of this run", file=sys.stderr)  # fmt: skip
                return
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.refusal = (
                f"'{run_dir}' is being trained by {holder}; wait for it to end (a second "
                "training would mix their checkpoints), or train into another run_dir"
            )
            return
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self, tidy: bool = False) -> None:
        """Unlock; `tidy`: a refused start also removes the lock file and run folder it made."""
        if self.file.closed:
            return
        self.file.close()  # closing the only descriptor releases the flock
        if tidy and self.made_file:
            self.path.unlink(missing_ok=True)
            if self.made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
