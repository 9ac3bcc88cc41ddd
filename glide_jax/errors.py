"""User-facing errors: raised for bad input, printed by `main.py` without a traceback."""

from __future__ import annotations

import errno


class UserError(Exception):
  """An error caused by the user's input (config, prompt, path, checkpoint).

  `main.py` prints the message alone and exits with code 2; nothing is deleted.
  """


class ConfigError(UserError):
  """An invalid configuration value."""


class TrainingDivergedError(UserError):
  """Training stopped after too many consecutive non-finite steps; the last checkpoint is kept."""


def is_disk_full(error: BaseException | None) -> bool:
  """ENOSPC or a quota error, raised directly or reported by a library (TensorStore: RESOURCE_EXHAUSTED)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
