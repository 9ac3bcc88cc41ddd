"""Test set-up: the shared offline MNIST, and a persistent XLA compilation cache shared with subprocesses.

The package is imported from the checkout (pytest.ini's `pythonpath`, or `pip install -e .`).
"""

import os

from helpers.paths import REPO

# The prepared MNIST beside the checkout (read-only); nothing is ever downloaded in tests.
_SHARED_TFDS = os.path.join(os.path.dirname(REPO), "shared", "tensorflow_datasets")
if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(_SHARED_TFDS):
  os.environ["TFDS_DATA_DIR"] = _SHARED_TFDS

import jax  # noqa: E402

# Compiled programs are reused across tests (and subprocesses, through the environment variable).
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".pytest_cache", "xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
