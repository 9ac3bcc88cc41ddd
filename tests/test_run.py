"""glide_jax/run.py: the mesh a training run takes on a CPU of any core count (one device per core)."""

import jax
import pytest

from configs import mnist_cpu
from glide_jax import run as run_lib
from glide_jax import sharding


@pytest.mark.parametrize("cores,used", [(1, 1), (2, 2), (3, 2), (6, 4), (12, 8)])
def test_the_mesh_spans_the_devices_the_microbatch_splits_over_and_says_so(monkeypatch, capsys, cores, used):
  """mnist_cpu's microbatches of 16 on a laptop of 1, 2, 3, 6 or 12 cores: 1, 2, 2, 4 and 8 devices, and a line
  whenever some are left idle. (tests/test_main.py trains the 3-core case through main.py.)"""
  devices = [f"cpu:{i}" for i in range(cores)]
  monkeypatch.setattr(jax, "devices", lambda: devices)
  monkeypatch.setattr(sharding, "make_mesh", lambda shape, given: (tuple(shape), list(given)))
  shape, given = run_lib.mesh_the_batch_fits(mnist_cpu.get_config())
  assert given == devices[:used] and shape == (-1, 1)
  out = capsys.readouterr().out
  if used == cores:
    assert out == ""
  else:
    assert out == (f"Using {used} of the {cores} devices: config.train.microbatch_size = 16 examples split evenly "
                   f"over {used}; a multiple of {cores} would use them all.\n")
