"""CPU set-up that must happen before JAX starts (this module does not import JAX)."""

import os


def use_all_cpu_cores() -> None:
  """On CPU, XLA runs one device's convolutions on about one core: one host device per core uses them all.

  Sets --xla_force_host_platform_device_count to the core count unless XLA_FLAGS already sets it or
  GLIDE_HOST_DEVICES=0. It shapes only the CPU platform, so it is harmless on GPU and TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags or os.environ.get("GLIDE_HOST_DEVICES", "1") == "0":
    return
  count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
