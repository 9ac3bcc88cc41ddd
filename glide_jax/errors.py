"""User-facing errors: raised for bad input, printed by `main.py` without a traceback."""


class UserError(Exception):
  """An error caused by the user's input (config, prompt, path, checkpoint).

  `main.py` prints the message alone and exits with code 2; nothing is deleted.
  """


class ConfigError(UserError):
  """An invalid configuration value."""


class TrainingDivergedError(UserError):
  """Training stopped after too many consecutive non-finite steps; the last checkpoint is kept."""
