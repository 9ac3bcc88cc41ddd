"""Divergence: a step with a non-finite loss or gradient changes nothing but the counters, and too many in
a row stop training with the last checkpoint kept."""

import os
import re

import jax
import numpy as np
import pytest

from configs import tiny
from glide_jax import data as data_lib
from glide_jax import sharding as sharding_lib
from glide_jax.errors import TrainingDivergedError
from glide_jax.experiment import Experiment
from glide_jax.modes.train import run as train
from helpers.runs import checkpoint_steps, read, restore_checkpoint, tiny_config
from helpers.trees import assert_trees_equal

# ---------------------------------------------------------------------------------------------------------
# 4. Non-finite steps are skipped; too many in a row stop training with the checkpoint kept.


def test_train_step_skips_a_nonfinite_batch():
  config = tiny.get_config()
  exp = Experiment(config)
  step_fn = exp.train_step_fn()  # glide_jax.train_step.train_step, jitted over the mesh as the loop runs it.
  batches = exp.batch_source()
  rng = jax.random.key(3)
  good = batches(0)
  bad = dict(good, images=np.full_like(good["images"], np.nan))

  state = exp.init_fn()
  initial = jax.device_get(state)  # The state is donated to the step: keep a host copy.
  for k in (1, 2):
    state, metrics = step_fn(state, sharding_lib.put_batch(bad, exp.mesh), rng)
    now = jax.device_get(state)
    assert int(now.step) == k
    assert int(now.nonfinite_streak) == k
    assert float(metrics["nonfinite"]) == 1.0
    assert int(metrics["nonfinite_streak"]) == k
    assert_trees_equal(now.params, initial.params)
    assert_trees_equal(now.ema_params, initial.ema_params)
    assert_trees_equal(now.opt_state, initial.opt_state)

  state, metrics = step_fn(state, sharding_lib.put_batch(good, exp.mesh), rng)
  now = jax.device_get(state)
  assert int(now.step) == 3 and int(now.nonfinite_streak) == 0
  assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
  # (Zero-initialised output layers block most gradients on the first update, so not every leaf moves.)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), now.params, initial.params)
  assert any(jax.tree_util.tree_leaves(changed))
  counts = [int(x) for x in jax.tree_util.tree_leaves(now.opt_state) if np.ndim(x) == 0]
  assert counts and all(c == 1 for c in counts)  # Adam counted exactly the one good step.
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(now.params))


def test_too_many_nonfinite_steps_stop_training_and_keep_the_checkpoint(tmp_path, monkeypatch):
  original = data_lib.BatchSource.__call__

  def nan_from_step_2(self, step):
    batch = original(self, step)
    if step >= 2:
      batch["images"] = np.full_like(batch["images"], np.nan)
    return batch

  monkeypatch.setattr(data_lib.BatchSource, "__call__", nan_from_step_2)
  workdir = str(tmp_path / "run")
  config = tiny_config(num_steps=20, checkpoint_every=2, max_nonfinite_steps=3, log_every=1)
  with pytest.raises(TrainingDivergedError) as info:
    train(config, workdir)
  message = str(info.value)
  assert "not finite for 3 steps in a row" in message, message
  kept = re.search(r"The last checkpoint in (\S+) \(step (\d+)\) is from before them and is kept", message)
  assert kept, message
  assert kept.group(1) == os.path.join(workdir, "checkpoints")
  assert checkpoint_steps(workdir) == [2]  # None written in the streak (steps 3-5).
  assert int(kept.group(2)) == 2
  assert "--config.train.learning_rate=0.0001" in message
  # The steps were skipped: the kept checkpoint holds the finite parameters of step 2.
  state2 = restore_checkpoint(config, workdir, step=2)
  latest = restore_checkpoint(config, workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(latest.params))
  assert_trees_equal(latest.params, state2.params)
  assert_trees_equal(latest.ema_params, state2.ema_params)
  nonfinite = [m for m in read(os.path.join(workdir, "metrics.jsonl")).splitlines() if '"nonfinite": 1.0' in m]
  assert len(nonfinite) >= 3




def test_a_diverged_run_recovers_by_the_printed_advice(tmp_path):
  """The issue's case: a 4-step run (checkpoints 2 and 4) resumed with an absurd learning rate diverges; no
  checkpoint is written in the streak, so 2 and 4 survive retention; the advised rerun resumes from 4 with a
  fresh streak and finishes."""
  workdir = str(tmp_path / "run")
  train(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  good = restore_checkpoint(tiny_config(), workdir, step=4)
  blowup = tiny_config(num_steps=12, checkpoint_every=2, max_nonfinite_steps=3, learning_rate=1e30,
                       keep_checkpoints=2)
  with pytest.raises(TrainingDivergedError) as info:
    train(blowup, workdir)
  message = str(info.value)
  assert "(step 4) is from before them" in message, message
  assert checkpoint_steps(workdir) == [2, 4]
  assert_trees_equal(restore_checkpoint(tiny_config(), workdir, step=4).params, good.params)
  lower = float(re.search(r"--config.train.learning_rate=(\S+)", message).group(1))
  # A tenth of 1e30 would diverge again: the advice is the default rate, and says why.
  assert lower == pytest.approx(2e-4) and "a tenth of 1e+30 would still be far above" in message
  # Following the advice.
  state = train(tiny_config(num_steps=8, checkpoint_every=2, max_nonfinite_steps=3, keep_checkpoints=2,
                            learning_rate=lower), workdir)
  assert int(state.step) == 8 and int(state.nonfinite_streak) == 0
  assert checkpoint_steps(workdir) == [6, 8]
  final = restore_checkpoint(tiny_config(), workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(final.params))


def test_recovery_command_lowers_the_learning_rate_of_the_command_line(monkeypatch):
  from glide_jax.modes.train import recovery_command
  monkeypatch.setattr("sys.argv", ["/x/main.py", "--config=configs/tiny.py", "--workdir=/w",
                                   "--config.train.learning_rate=1e30"])
  assert recovery_command(0.05) == ("python /x/main.py --config=configs/tiny.py --workdir=/w "
                                    "--config.train.learning_rate=0.005")
  assert recovery_command(1e30).endswith("--config.train.learning_rate=0.0002")  # A tenth would not help.
  monkeypatch.setattr("sys.argv", ["pytest"])
  assert recovery_command(2e-4) == "the same command with --config.train.learning_rate=2e-05"
