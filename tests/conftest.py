"""Test set-up: the shared offline MNIST, and a persistent XLA compilation cache shared with subprocesses.

The package is imported from the checkout (pytest.ini's `pythonpath`, or `pip install -e .`).
"""

import os

from glide_jax.runtime import CPU_MEMORY_SCHEDULER  # (Imports no JAX.)
from helpers.paths import REPO
from helpers.xla import HOST_DEVICES, host_device_flag

# The prepared MNIST beside the checkout (read-only); nothing is ever downloaded in tests.
_SHARED_TFDS = os.path.join(os.path.dirname(REPO), "shared", "tensorflow_datasets")
if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(_SHARED_TFDS):
  os.environ["TFDS_DATA_DIR"] = _SHARED_TFDS

# The suite compiles hundreds of small programs and runs each for seconds: XLA's optimisation passes cost more
# than they save here, and XLA:CPU's older loop emitters compile faster than its fusion emitters
# (docs/testing.md has the figures). Set before JAX is imported; subprocesses inherit both. Tests of the
# optimised numbers themselves run a subprocess in `full_optimizations_env`; GLIDE_TEST_FULL_OPTIMIZATIONS=1
# runs the whole suite as users compile.
# As given to pytest: xdist workers inherit the controller's environment, which this file has already changed.
_USER_XLA_FLAGS = os.environ.setdefault("GLIDE_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
FAST_COMPILE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if os.environ.get("GLIDE_TEST_FULL_OPTIMIZATIONS", "") not in ("", "0"):
  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"
  _suite_flags = ""
else:
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  _suite_flags = FAST_COMPILE_XLA_FLAGS
# The tests run on the CPU devices main.py gives its subprocesses (HOST_DEVICES), with main.py's CPU scheduler:
# a program compiled here and the same program in a main.py subprocess are one entry in the compilation cache.
_flags = (_USER_XLA_FLAGS, _suite_flags, CPU_MEMORY_SCHEDULER, host_device_flag(HOST_DEVICES))
os.environ["XLA_FLAGS"] = " ".join(f for f in _flags if f)

import jax  # noqa: E402
import pytest  # noqa: E402

# Compiled programs are reused across tests (and subprocesses, through the environment variable).
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def full_optimizations_env():
  """The environment for a subprocess that compiles as users compile: XLA's full optimisation and the
  XLA_FLAGS the suite was started with, without the suite's compile shortcuts (flags XLA reads once per
  process, hence a subprocess). For tests that pin the optimised numbers themselves."""
  return dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="0", XLA_FLAGS=_USER_XLA_FLAGS, PYTHONPATH=REPO)


# Files that take a minute or more (cold cache, 2-core CPU; docs/testing.md). They are marked `slow`
# (`pytest -m "not slow"` leaves them out while iterating; CI runs everything) and start first, so that
# `pytest -n 2 --dist loadfile` does not end on one worker running a long file while the other waits.
SLOW_FILES = ("test_multihost.py", "test_sharding.py", "train/test_preemption.py", "editing/test_edit.py",
              "test_datasets.py", "test_main.py", "test_notebook.py", "sampling/test_cascade.py",
              "test_scripts.py", "train/test_divergence.py")


def _slow_rank(item) -> int:
  path = item.path.as_posix()
  return next((i for i, name in enumerate(SLOW_FILES) if path.endswith("/tests/" + name)), len(SLOW_FILES))


@pytest.hookimpl(tryfirst=True)  # Before `-m` deselects by marker.
def pytest_collection_modifyitems(config, items):
  for item in items:
    if _slow_rank(item) < len(SLOW_FILES):
      item.add_marker(pytest.mark.slow)
  items.sort(key=_slow_rank)  # Stable: tests keep their order within a file, and the other files theirs.
