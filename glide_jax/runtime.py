"""Process set-up, before any work: signals, CPU devices (before JAX starts) and the multi-host runtime.

This module imports JAX only inside the functions that need it, so `use_all_cpu_cores` can run first.
"""

import ctypes
import gc
import logging
import os
import platform
import signal
import sys
import warnings
from typing import Optional

# XLA's CPU scheduler that orders the step's operations to keep fewer buffers alive at once: less temporary
# memory per device and no slower (docs/benchmarks.md). It only affects the CPU compiler.
CPU_MEMORY_SCHEDULER = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def cache_root() -> str:
  """Where the project caches what it makes once (classifiers, prepared caption folders): $GLIDE_CACHE_DIR,
  else ~/.cache/glide_jax."""
  return os.path.expanduser(os.environ.get("GLIDE_CACHE_DIR") or os.path.join("~", ".cache", "glide_jax"))


# The modes whose training loop handles SIGTERM and SIGINT itself (saving a checkpoint).
TRAINING_MODES = ("train", "train_clip")


def _stopped_before_work(signum, frame):
  """SIGTERM while starting up (imports, flags): nothing has been written yet, so stop with a message.

  os._exit, not SystemExit: the signal can arrive while Python runs a garbage-collection callback or a
  __del__, where a raised exception is printed as "Exception ignored" and the run goes on.
  """
  mode = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--mode=")), "train")
  if mode in TRAINING_MODES:  # A clean stop, as a preempted trainer's: exit 0.
    print(f"Stopped by {signal.Signals(signum).name} before the first step; nothing new to save. Rerun the same "
          f"command to start or resume.", flush=True)
    code = 0
  else:
    print(f"Stopped by {signal.Signals(signum).name} before --mode={mode} started; nothing was written. Rerun the "
          f"same command.", file=sys.stderr, flush=True)
    code = 128 + signum
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def stop_on_sigterm_before_work() -> None:
  """SIGTERM before the mode starts ends the process at once with a message (training installs its own
  handler, which saves a checkpoint, once it starts; the other modes restore the default)."""
  signal.signal(signal.SIGTERM, _stopped_before_work)


def use_all_cpu_cores() -> None:
  """On CPU, XLA runs one device's convolutions on about one core: one host device per core uses them all.

  Sets --xla_force_host_platform_device_count to the core count unless XLA_FLAGS already sets it or
  GLIDE_HOST_DEVICES=0, and XLA's memory-optimised CPU scheduler unless XLA_FLAGS names a scheduler.
  Both shape only the CPU platform, so they are harmless on GPU and TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_scheduler_type" not in flags:
    flags = f"{flags} {CPU_MEMORY_SCHEDULER}".strip()
  if "xla_force_host_platform_device_count" not in flags and os.environ.get("GLIDE_HOST_DEVICES", "1") != "0":
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    flags = f"{flags} --xla_force_host_platform_device_count={count}"
  os.environ["XLA_FLAGS"] = flags


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Free memory the heap keeps rather than returning it to the system: more than a CPU step frees at once.
TRIM_THRESHOLD = 2**30
_THRESHOLD_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


# Allocations between two collections of Python's youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
  """Python's cyclic garbage collector set for a process that holds a large, long-lived heap (JAX, Flax, Orbax
  and TFDS; traced programs) and allocates many short-lived objects (tracing, lowering and every checkpoint save
  allocate tens of thousands): with CPython's defaults the collector scanned that heap often enough to take a
  tenth of a tiny training run's CPU (docs/benchmarks.md). What exists when this is called is frozen (never
  scanned again; call it once the imports are done), and the youngest generation is collected every 50,000
  allocations. Cycles are still collected, later. No number changes."""
  gc.freeze()
  gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def tune_malloc() -> tuple[str, ...]:
  """On glibc, the allocator set for a loop of steps that allocate and free the same buffers each time; which
  settings applied: "one arena", "freed memory kept". Call before JAX starts its threads. No number changes.

  - One arena (mallopt(M_ARENA_MAX, 1)) unless MALLOC_ARENA_MAX is set: XLA:CPU's threads allocate and free
    each step's temporary buffers, and in the arenas glibc gives threads by default a heap grew for the step
    and was trimmed after it, so every step mapped its pages in again (a fifth of `mnist_cpu`'s step).
  - Freed memory kept (every allocation from the heap, none mapped on its own, and a trim threshold of 1 GiB)
    unless MALLOC_MMAP_MAX_, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set: glibc maps a buffer
    above its mmap threshold (at most 32 MiB) on its own and unmaps it when freed, and trims the heap by
    thresholds that follow the largest buffer freed, so `mnist_scenes_cpu`'s step (XLA's 130 MB of temporary
    memory a device, its 12.9 MB embedding's gradient, moments and EMA) faulted all of it in again each time.
  docs/benchmarks.md has the figures.
  """
  if not hasattr(os, "confstr"):
    return ()
  try:
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
      return ()
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, ValueError, AttributeError):
    return ()
  applied = []
  if not os.environ.get("MALLOC_ARENA_MAX") and mallopt(M_ARENA_MAX, 1) == 1:
    applied.append("one arena")
  if (not any(os.environ.get(name) for name in _THRESHOLD_VARIABLES)
      and mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
    applied.append("freed memory kept")
  return tuple(applied)


def quiet_library_noise() -> None:
  """Our warnings as one `warning:` line; library internals that are not the user's to act on, silenced.

  Reading a damaged checkpoint leaves TensorStore callbacks firing into Orbax's closed event loop: each
  prints a "RuntimeError: Event loop is closed" traceback as an unraisable exception (hundreds per
  checkpoint) and asyncio logs "Future exception was never retrieved". The damage itself is reported in
  one line.
  """
  package_dir = os.path.dirname(os.path.abspath(__file__))
  default_showwarning, default_unraisablehook = warnings.showwarning, sys.unraisablehook

  def showwarning(message, category, filename, lineno, file=None, line=None):
    if os.path.abspath(filename).startswith(package_dir):
      print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)
    else:
      default_showwarning(message, category, filename, lineno, file, line)

  def unraisablehook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    default_unraisablehook(unraisable)

  warnings.showwarning, sys.unraisablehook = showwarning, unraisablehook
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  # TFDS recommends OpenCV on every start (the images decode fine without it); Orbax warns that a checkpoint
  # directory opened read-only (sampling, evaluation) is read-only; TFDS that a dataset to be prepared on
  # first use has no metadata yet.
  # ml_collections warns that a config file's get_config() returned None, which the flag error then says.
  noise = ("OpenCV is not installed", "Given directory is read only")
  logging.getLogger("absl").addFilter(lambda record: not (record.getMessage().startswith(noise) or (
      record.getMessage().startswith("Variant folder") and "has no dataset_info.json" in record.getMessage())
      or "get_config() returned None" in record.getMessage()))
  # Orbax also logs a failed background save with its traceback from each of its threads; the same error
  # is raised to the training loop, which reports it (a full disk: one `error:` paragraph).
  logging.getLogger("absl").addFilter(
      lambda record: not (record.levelno >= logging.ERROR and record.getMessage().startswith("[process=")))


def describe_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> str:
  """The host CPU as timings should name it: its model name, usable cores, and whether it has AVX-512.

  XLA:CPU's speed differs several-fold between CPUs with and without AVX-512 at the same core count, so a
  figure without this is not comparable. Reads Linux's /proc/cpuinfo; elsewhere, what `platform` knows.
  """
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  name, flags = "", None
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
          name = value.strip()
        elif key.strip() == "flags" and flags is None:
          flags = value.split()
  except OSError:
    pass
  name = name or platform.processor() or platform.machine() or "unknown CPU"
  vector = "" if flags is None else (", avx512f" if "avx512f" in flags else ", no avx512f")
  return f"{name}, {cores} core{'s' if cores != 1 else ''}{vector}"


def describe_machine() -> str:
  """What ran a figure: the CPU (describe_cpu) and, on an accelerator, the devices JAX uses beside it."""
  import jax

  devices = jax.devices()
  if devices[0].platform == "cpu":
    return f"CPU: {describe_cpu()} ({len(devices)} JAX device{'s' if len(devices) != 1 else ''})"
  return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform.upper()}); host CPU: {describe_cpu()}"


CACHE_ENV = "GLIDE_JAX_CACHE_DIR"


def default_cache_dir() -> str:
  """$GLIDE_JAX_CACHE_DIR, else $XDG_CACHE_HOME/glide_jax/jax (~/.cache/glide_jax/jax)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.environ.get(CACHE_ENV, os.path.join(base, "glide_jax", "jax"))


def enable_compilation_cache() -> Optional[str]:
  """Turns on JAX's persistent compilation cache, so a later run of the same program loads it instead of
  compiling again (XLA keys it on the program, the devices and the flags, so it is never stale).

  The directory is default_cache_dir(); GLIDE_JAX_CACHE_DIR=off (or "") turns the cache off, and a cache
  directory set through JAX itself ($JAX_COMPILATION_CACHE_DIR) is left as it is. Programs that compile in
  under a second are not stored. Returns the directory in use, or None. An unwritable directory leaves the
  cache off with a one-line warning rather than failing the run.
  """
  import jax

  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = default_cache_dir()
  if path.strip().lower() in ("", "0", "off", "none", "false"):
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"warning: compilation cache off: cannot create {path} ({e.strerror}); set ${CACHE_ENV} to a "
          f"writable directory, or to 'off'.", flush=True)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def initialize_distributed(coordinator_address: Optional[str], num_processes: Optional[int],
                           process_id: Optional[int]) -> None:
  """Joins a multi-process JAX runtime when one is asked for; a single process does nothing.

  A manual launch names all three (flags or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID);
  on a TPU pod slice or under SLURM, JAX finds the other processes by itself. An incomplete manual launch
  is a UserError.
  """
  import jax

  from glide_jax.errors import UserError

  if num_processes and num_processes > 1:
    if not coordinator_address or process_id is None or not 0 <= process_id < num_processes:
      raise UserError(f"a manual multi-host launch of {num_processes} processes needs --coordinator_address="
                      f"HOST:PORT (process 0's host) and --process_id from 0 to {num_processes - 1} on every "
                      f"process (or $JAX_COORDINATOR_ADDRESS and $JAX_PROCESS_ID).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif num_processes is None and any(v in os.environ for v in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")):
    jax.distributed.initialize()  # Cluster auto-detection (TPU pod slices, SLURM).
  if jax.process_count() > 1:
    print(f"JAX process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"devices, {jax.device_count()} in all.", flush=True)
