"""One trainer per workdir: an OS file lock on WORKDIR/train.lock, held while training.

The kernel releases the lock when the process ends, however it ends (kill -9 included), so a lock is
never left stuck. Sampling and evaluation only read checkpoints and take no lock. Where the platform has
no `fcntl` (Windows), training runs unlocked.
"""

from __future__ import annotations

import os
import socket
from typing import IO, Optional

from glide_jax.errors import UserError

try:
  import fcntl
except ImportError:  # pragma: no cover - not POSIX
  fcntl = None

LOCK_NAME = "train.lock"


class WorkdirLock:
  """Context manager: the workdir's training lock, or a UserError naming the process that holds it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file: Optional[IO[str]] = None

  def __enter__(self) -> "WorkdirLock":
    if fcntl is None:
      return self
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise UserError(f"Another training run ({holder}) is using --workdir {self.workdir}; two trainers would "
                      f"overwrite each other's checkpoints and metrics. Wait for it to finish or stop it, or pass "
                      f"another --workdir. (Sampling and evaluation can run beside it.)") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # A finished run leaves the file as it found it: empty.
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
