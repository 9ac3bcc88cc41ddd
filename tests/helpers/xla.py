"""XLA flags for the tests and the subprocesses they start (tests/conftest.py sets the suite's own)."""

import os

HOST_DEVICES = 2  # The tests, and every main.py subprocess, see exactly this many CPU devices, whatever the machine.


def host_device_flag(host_devices: int) -> str:
  return f"--xla_force_host_platform_device_count={host_devices}"


def xla_flags(host_devices: int) -> str:
  """$XLA_FLAGS as the suite set them, with exactly `host_devices` CPU devices (the last flag given wins)."""
  return f"{os.environ.get('XLA_FLAGS', '')} {host_device_flag(host_devices)}".strip()
