"""User-facing errors: raised for bad input, printed by `report_errors` (every command's) without a traceback."""

from __future__ import annotations

import errno
import sys
from typing import Any, Callable


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


def report_errors(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls fn; a user error or a full disk ends the process with one `error:` paragraph (exit 2), Ctrl-C
  with "Interrupted." (exit 130). Anything else is a bug and keeps its traceback."""
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    if not is_disk_full(e):
      raise
    print(f"error: the disk is full ({type(e).__name__}: {' '.join(str(e).split())[:200]}). Free some space and "
          f"rerun the same command; checkpoints already written are kept.", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
