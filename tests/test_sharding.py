"""The (data, fsdp) mesh: partition rules, and training on 8 host devices against 1 device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from glide_jax import sharding
from glide_jax.errors import ConfigError, UserError
from helpers.paths import REPO
from helpers.xla import xla_flags

# The plain step on 8x1 (data parallel) and the microbatched step on 2x4 (fsdp 4), each against one device: every
# program is a compile of its own, so fsdp's plain step is left to test_multihost.py's 8-device run on 4x2.
MESHES = ("8x1",)
MICROBATCHED_MESH = "2x4"


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((-1, 1), 8) == (8, 1)
  assert sharding.resolve_mesh_shape((-1, 2), 8) == (4, 2)
  assert sharding.resolve_mesh_shape((2, -1), 8) == (2, 4)
  assert sharding.resolve_mesh_shape((-1,), 4) == (4, 1)
  with pytest.raises(ConfigError, match="does not divide the 8 devices"):
    sharding.resolve_mesh_shape((-1, 3), 8)
  with pytest.raises(ConfigError, match="needs 4 devices but 8 are available"):
    sharding.resolve_mesh_shape((2, 2), 8)
  with pytest.raises(ConfigError, match="at most one -1"):
    sharding.resolve_mesh_shape((-1, -1), 8)


def test_fsdp_spec_shards_the_largest_divisible_dimension():
  assert sharding.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((256, 96), 4) == P("fsdp", None)
  assert sharding.fsdp_spec((255, 96), 4) == P(None, "fsdp")   # 255 does not divide: next largest.
  assert sharding.fsdp_spec((4099,), 2) == P()                  # Nothing divides: replicated.
  assert sharding.fsdp_spec((64,), 4) == P()                    # Small: replicated.
  assert sharding.fsdp_spec((3, 3, 64, 128), 1) == P()          # No fsdp axis.


def test_devices_for_batch_takes_the_most_devices_the_microbatch_splits_over():
  # mnist_cpu's microbatches of 16 on a CPU of 1, 3, 6, 12 and 64 cores (one device per core).
  assert [sharding.devices_for_batch((-1, 1), 16, n) for n in (1, 3, 6, 12, 64)] == [1, 2, 4, 8, 16]
  assert sharding.devices_for_batch((-1, 2), 16, 7) == 4   # fsdp 2: the data axis takes 2 of the 4.
  assert sharding.devices_for_batch((-1, 1), 15, 2) == 1
  assert sharding.devices_for_batch((2, 1), 15, 2) == 2    # Sizes the user fixed are kept; the error says why.
  assert sharding.devices_for_batch((-1, 2), 15, 6) == 6   # Nothing fits: the full count, and its error.


def test_an_indivisible_batch_names_sizes_that_fit():
  mesh = sharding.make_mesh((-1, 1))  # The suite's 2 devices.
  with pytest.raises(UserError, match=r"batch_size = 15 is not divisible by the 2 devices .*of 2, e\.g\. 16\."):
    sharding.check_batch_divisible(15, mesh)
  with pytest.raises(UserError, match=r"batch_size = 18 in microbatches of 3 \(config\.train\.microbatch_size\) does "
                     r"not split .* multiple of 2 examples, e\.g\. --config\.train\.microbatch_size=4 "
                     r"--config\.train\.batch_size=20\."):
    sharding.check_batch_divisible(18, mesh, microbatches=6)
  sharding.check_batch_divisible(20, mesh, microbatches=5)  # Microbatches of 4: 2 rows per device.


@pytest.fixture(scope="module")
def report():
  """8 host CPU devices (in a subprocess: the flag must be set before JAX starts)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers", "sharded_vs_single.py"),
                           MICROBATCHED_MESH, *MESHES], env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  return out


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_matches_one_device(report, mesh):
  run = report["meshes"][mesh]
  np.testing.assert_allclose(run["loss"], report["loss_single"], rtol=1e-5)
  # Adam divides by √v, so float-rounding differences in near-zero gradients move a parameter by up to a
  # fraction of the learning rate (1e-3 here): 1e-4 is far below one step's change, far above rounding.
  assert run["max_param_diff"] < 1e-4


@pytest.mark.parametrize("mesh", [*MESHES, f"{MICROBATCHED_MESH}-microbatched"])
def test_fsdp_shards_params_ema_and_adam_state(report, mesh):
  fsdp = int(mesh.split("-")[0].split("x")[1])
  run = report["microbatched"] if mesh.endswith("-microbatched") else report["meshes"][mesh]
  for tree in ("params", "ema_params", "adam_mu"):
    lay = run[tree]
    sharded = [k for k, spec in lay["specs"].items() if "fsdp" in spec]
    if fsdp == 1:
      assert not sharded and lay["bytes_per_device"] == lay["bytes"]
    else:
      # Every large array is split, so each device holds little more than 1/fsdp of the bytes.
      assert len(sharded) > 10, lay["specs"]
      assert lay["bytes_per_device"] < 1.25 * lay["bytes"] / fsdp, (tree, lay["bytes_per_device"], lay["bytes"])
  assert run["params"]["specs"] == run["ema_params"]["specs"] == run["adam_mu"]["specs"]


def test_microbatched_step_matches_one_device(report):
  run = report["microbatched"]
  np.testing.assert_allclose(run["loss"], run["loss_single"], rtol=1e-5)
  assert run["max_param_diff"] < 1e-4
  # Its own randomness per microbatch: not the unsplit batch's losses.
  assert abs(run["loss_single"][0] - report["loss_single"][0]) > 1e-6


def test_indivisible_batch_is_a_clear_error(report):
  assert "not divisible by the 8 devices" in report["indivisible_error"]
  # 16 rows cannot give each of 8 devices whole rows of 4 microbatches.
  assert "8 devices of the mesh" in report["indivisible_microbatch_error"]
  assert "in microbatches of 4 (config.train.microbatch_size)" in report["indivisible_microbatch_error"]
  assert ("a multiple of 8 examples, e.g. --config.train.microbatch_size=8 --config.train.batch_size=16"
          in report["indivisible_microbatch_error"])
