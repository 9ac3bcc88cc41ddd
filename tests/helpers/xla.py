"""XLA flags for the subprocesses a test starts: the suite's own (tests/conftest.py) and a host device count."""

import os


def xla_flags(host_devices: int) -> str:
  """$XLA_FLAGS as the suite set them, with exactly `host_devices` CPU devices (the last flag given wins)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}".strip()
