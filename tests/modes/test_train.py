"""Training end to end on the shared MNIST: the loss falls, resume is exact, sharding matches one device."""

import json
import os

import pytest

from configs import tiny
from glide_jax.modes.train import run as train
from helpers.trees import assert_trees_equal


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_loss_falls_on_mnist(tmp_path):
  config = tiny.get_config()
  config.train.num_steps = 40
  config.train.log_every = 10
  train(config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  losses = [m["loss"] for m in rows]
  assert len(losses) == 4
  # The step's compile time is reported once, in the first row, and kept out of its steps per second.
  assert rows[0]["compile_s"] > 0 and not any("compile_s" in m for m in rows[1:])
  assert losses[-1] < 0.6 * losses[0], losses
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "40"


def test_resume_is_bit_exact(tmp_path, capsys):
  config = tiny.get_config()
  config.train.checkpoint_every = 100
  config.train.num_steps = 6
  state_half = train(config, str(tmp_path / "resumed"))
  assert int(state_half.step) == 6
  config.train.num_steps = 12
  resumed = train(config, str(tmp_path / "resumed"))
  straight = train(config, str(tmp_path / "straight"))
  assert int(resumed.step) == int(straight.step) == 12
  assert_trees_equal(resumed.params, straight.params)
  assert_trees_equal(resumed.ema_params, straight.ema_params)
  assert_trees_equal(resumed.opt_state, straight.opt_state)
  rows = read_metrics(str(tmp_path / "resumed"))
  # Resuming a run that is already there says so and changes nothing.
  resumed_again = train(config, str(tmp_path / "resumed"))
  assert int(resumed_again.step) == 12 and read_metrics(str(tmp_path / "resumed")) == rows
  assert "Nothing to train: the run in" in capsys.readouterr().out
  assert [m["loss"] for m in read_metrics(str(tmp_path / "resumed"))][-1] == pytest.approx(
      [m["loss"] for m in read_metrics(str(tmp_path / "straight"))][-1], rel=0, abs=0)


def test_workdir_that_is_a_file_is_a_user_error(tmp_path):
  from glide_jax.errors import UserError
  path = tmp_path / "file"
  path.write_text("keep me")
  with pytest.raises(UserError, match="is a file"):
    train(tiny.get_config(), str(path))
  assert path.read_text() == "keep me"
