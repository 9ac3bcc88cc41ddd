"""Test set-up: the shared offline MNIST, and a persistent XLA compilation cache shared with subprocesses.

The package is imported from the checkout (pytest.ini's `pythonpath`, or `pip install -e .`).
"""

import fcntl
import os

from glide_jax.runtime import CPU_MEMORY_SCHEDULER, tune_gc, tune_malloc  # (Imports no JAX.)
from helpers.paths import REPO
from helpers.xla import HOST_DEVICES, host_device_flag

tune_malloc()  # As main.py's processes allocate, before JAX starts its threads.
tune_gc()  # As main.py's processes collect; again once the test modules are imported (below).

# A crash in native code in any process a test starts (main.py, scripts, notebook kernels) prints its Python stack
# on stderr, which the test then shows, instead of only a negative exit code.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

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


# Seconds each file's tests took in a cold run of the whole suite (2-core AMD EPYC Zen 4, AVX-512, two workers;
# docs/testing.md), files of 10 s or more. `pytest -n 2 --dist loadfile` starts the longest first, so that the run
# does not end on one worker running a long file while the other waits; unlisted files come last, in collection
# order. Files of half a minute or more here (about a minute on the AVX2-only EPYC) are marked `slow`:
# `pytest -m "not slow"` leaves them out while iterating (CI runs everything).
FILE_SECONDS = {
    "train/test_preemption.py": 81, "test_multihost.py": 80, "test_sharding.py": 56, "test_scenes.py": 48,
    "sampling/test_guided.py": 47, "test_main.py": 45, "modes/test_cascade.py": 45, "test_scripts.py": 42,
    "test_notebook.py": 40, "modes/test_convert.py": 37, "modes/test_sample.py": 31, "test_datasets.py": 30,
    "train/test_checkpoint.py": 24, "test_experiment.py": 23, "train/test_divergence.py": 22,
    "modes/test_edit.py": 22, "modes/test_train.py": 19, "train/test_step.py": 18, "modes/test_eval.py": 17,
    "train/test_disk_full.py": 16, "model/test_text2im.py": 12, "test_data_prepare.py": 12,
    "released/test_keymap.py": 12, "diffusion/test_known_region.py": 11, "train/test_workdir_lock.py": 11,
}
SLOW_SECONDS = 30


def _file_seconds(item) -> int:
  path = item.path.as_posix()
  return next((s for name, s in FILE_SECONDS.items() if path.endswith("/tests/" + name)), 0)


def pytest_configure(config):
  # xdist orders test files by their number of tests unless told not to; the order below is the one wanted.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # Before `-m` deselects by marker.
def pytest_collection_modifyitems(config, items):
  for item in items:
    if _file_seconds(item) >= SLOW_SECONDS:
      item.add_marker(pytest.mark.slow)
  items.sort(key=lambda item: -_file_seconds(item))  # Stable: tests keep their order within a file.


def pytest_collection_finish(session):
  tune_gc()  # The test modules have imported JAX, Flax, Orbax and TFDS: freeze them, as main.py does its mode's.


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> str:
  """The directory of the tiny config's evaluation classifier (helpers.runs.classifier_overrides), trained once per
  test run: the xdist workers share it, the first to ask training it under a lock while the others wait, then
  read it. Tests that score samples read it; test_eval.py trains its own, as evaluate does it."""
  from glide_jax.evaluation.classifier_cache import get_or_train_classifier
  from helpers.runs import tiny_config, with_classifier

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # This run's, above every worker's own.
  directory = root / "tiny_classifier"
  with open(root / "tiny_classifier.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    get_or_train_classifier(with_classifier(tiny_config(), directory), verbose=False)
  return str(directory)


@pytest.fixture(scope="session")
def tiny_clip_run(tmp_path_factory):
  """(config, workdir) of a finished 4-step --mode=train_clip run on the tiny config's data: the CLIP that the
  training and the CLIP-guided sampling tests share."""
  from glide_jax.modes.train_clip import run
  from helpers.runs import tiny_clip_config

  config = tiny_clip_config()
  workdir = str(tmp_path_factory.mktemp("tiny_clip"))
  run(config, workdir)
  return config, workdir
