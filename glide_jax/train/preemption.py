"""Stopping cleanly: SIGTERM/SIGINT finish the current step, then the loop saves and exits.

Single process: our own handlers set a flag (a second Ctrl-C interrupts at once). Several processes:
JAX's preemption sync point (jax.distributed's SIGTERM notifier) makes every host stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import jax


class PreemptionGuard:
  """Context manager; `should_stop(step)` is True once a stop was requested (on every host at once)."""

  def __init__(self):
    self.reason: Optional[str] = None
    self._previous: dict[int, object] = {}
    self._multi_process = jax.process_count() > 1

  def _handler(self, signum, frame):
    if self.reason is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: the user wants out now.
    self.reason = signal.Signals(signum).name

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread() and not self._multi_process:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    if self._multi_process:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.reason = "preemption notice"
      except RuntimeError:  # No preemption sync manager (jax.distributed not initialised with one).
        pass
    return self.reason is not None
