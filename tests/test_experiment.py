"""The Experiment: training through it reproduces the recorded trajectory, the random streams never meet,
and the workdir is opened in one place."""

import json
import os
import subprocess
import sys

import jax
import jaxlib
import numpy as np
import pytest

from configs import tiny
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.model import ModelConfig
from glide_jax.rng import STREAM_TAGS, stream_key
from helpers.paths import DATA, REPO


def has_avx512f() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return " avx512f" in f.read()
  except OSError:
    return False


def test_tiny_trajectory_matches_the_recording(full_optimizations_env):
  """The first steps' loss, MSE, VLB and gradient norm, and a sampler call, equal those recorded (the file says
  with what): bit for bit where XLA compiles the same code (same JAX, same vector ISA); to float rounding
  elsewhere, since XLA's CPU kernels sum in another order with and without AVX-512. Run in a process that
  compiles as users do, since the suite's compile shortcuts change the rounding."""
  with open(os.path.join(DATA, "tiny_trajectory.json")) as f:
    recorded = json.load(f)
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers", "tiny_trajectory.py"),
                           str(len(recorded["metrics"]))], env=full_optimizations_env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])

  machine = recorded["recorded_with"]
  same_build = (jax.__version__, jaxlib.__version__, has_avx512f()) == (machine["jax"], machine["jaxlib"],
                                                                         machine["avx512f"])
  assert len(got["metrics"]) == len(recorded["metrics"])
  for step, (want, have) in enumerate(zip(recorded["metrics"], got["metrics"])):
    assert set(want) <= set(have), (step, sorted(have))
    for key, hex_value in want.items():
      expected, value = float.fromhex(hex_value), float.fromhex(have[key])
      if same_build:
        assert value == expected, (step, key, have[key], hex_value)
      else:
        assert value == pytest.approx(expected, rel=1e-4), (step, key)
  if same_build:
    assert got["sample_sha256"] == recorded["sample_sha256"]
  else:
    assert float.fromhex(got["sample_sum"]) == pytest.approx(float.fromhex(recorded["sample_sum"]), rel=1e-3)


def test_random_streams_never_meet():
  """Init, training (every step), sampling and evaluation (every batch) and the classifier draw from keys
  that are all different: sampling batch 1 is not training's key, batch 0 is not the init key."""
  seed = 0
  keys = {name: stream_key(seed, name) for name in STREAM_TAGS}
  derived = dict(keys)
  for k in range(4):
    derived[f"train step {k}"] = jax.random.fold_in(keys["train"], k)
    for name in ("sample", "eval"):
      derived[f"{name} batch {k}"] = jax.random.fold_in(keys[name], k)
  data = {name: tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()) for name, key in derived.items()}
  assert len(set(data.values())) == len(data), data
  # The streams training has always used are unchanged, so older runs resume bit for bit.
  np.testing.assert_array_equal(jax.random.key_data(keys["init"]),
                                jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0)))
  np.testing.assert_array_equal(jax.random.key_data(keys["train"]),
                                jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))
  with pytest.raises(ValueError, match="Unknown random stream 'test'"):
    stream_key(seed, "test")


def test_the_model_config_is_built_once_from_the_config():
  config = tiny.get_config()
  exp = Experiment(config)
  assert exp.model.config is exp.model_config
  assert exp.model_config == ModelConfig.from_config(config, vocab_size=257)
  assert hash(exp.model_config) == hash(ModelConfig.from_config(config, vocab_size=257))
  with pytest.raises(Exception):
    exp.model_config.image_size = 32  # Frozen.


def test_open_workdir(tmp_path):
  config = tiny.get_config()
  absent = tmp_path / "run"
  with pytest.raises(UserError, match="does not exist"):
    Experiment(config, str(absent)).open_workdir(create=False)
  assert not absent.exists()
  assert Experiment(config, str(absent)).open_workdir(create=True) == str(absent)
  assert absent.is_dir()
  (tmp_path / "file").write_text("keep me")
  for create in (True, False):
    with pytest.raises(UserError, match="is a file, not a directory"):
      Experiment(config, str(tmp_path / "file")).open_workdir(create=create)
  assert (tmp_path / "file").read_text() == "keep me"
  with pytest.raises(UserError, match="No checkpoint in"):
    Experiment(config, str(absent)).load_params()
