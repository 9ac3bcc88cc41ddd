"""Checkpoints on resume: a damaged latest one is skipped and set aside, all damaged is an error, and a
checkpoint of another model config is refused with the differing fields named; closing waits for what opening
started."""

import os
import re
import shutil
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from glide_jax import sharding
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.modes.train import run as train
from glide_jax.saved_config import config_to_json
from glide_jax.train.checkpoint import Checkpointer
from helpers.runs import (
  assert_nothing_removed_or_changed,
  checkpoint_steps,
  corrupt_checkpoint,
  restore_checkpoint,
  resumed_from,
  run_main,
  snapshot,
  tiny_config,
)
from helpers.trees import assert_trees_equal

# Reading a damaged checkpoint leaves TensorStore callbacks firing into Orbax's closed event loop (printed,
# harmless); they surface at random later points as unraisable-exception warnings.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ---------------------------------------------------------------------------------------------------------
# 3. A damaged latest checkpoint is skipped (with a warning); if all are damaged it is an error.


@pytest.fixture(scope="module")
def four_steps_once(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("four_steps") / "run")
  train(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  assert checkpoint_steps(workdir) == [2, 4]
  return workdir


@pytest.fixture
def four_steps(four_steps_once, tmp_path):
  """A fresh copy of a workdir trained 4 tiny steps with checkpoints at 2 and 4."""
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps_once, workdir)
  return workdir


def test_damaged_latest_checkpoint_is_skipped(four_steps, capsys):
  workdir = four_steps
  corrupt_checkpoint(workdir, 4)
  damaged = snapshot(os.path.join(workdir, "checkpoints", "4"))
  with pytest.warns(UserWarning) as record:
    state = train(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  messages = [str(w.message) for w in record]
  assert any("Checkpoint at step 4" in m and "damaged" in m for m in messages), messages
  assert not any("Checkpoint at step 2" in m for m in messages), messages
  assert resumed_from(capsys.readouterr().out) == [2]
  assert int(state.step) == 6
  assert checkpoint_steps(workdir) == [2, 4, 6]
  # The damaged checkpoint was set aside, not deleted, so step 4 could be saved again.
  assert snapshot(os.path.join(workdir, "damaged_checkpoints", "4")) == damaged
  # The re-saved step 4 reads back.
  assert int(restore_checkpoint(tiny_config(), workdir, step=4).step) == 4


def test_every_checkpoint_damaged_is_a_user_error_and_deletes_nothing(four_steps):
  workdir = four_steps
  corrupt_checkpoint(workdir, 2)
  corrupt_checkpoint(workdir, 4)
  before = snapshot(workdir)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(UserError, match=r"Every checkpoint in .* is damaged") as info:
      train(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  assert "step 4" in str(info.value) and "step 2" in str(info.value)
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------------------
# 5. Resuming with another model config names the differing fields.


def test_damaged_checkpoints_are_one_line_each_on_the_command_line(four_steps):
  """No library tracebacks (TensorStore callbacks into Orbax's closed event loop printed hundreds): one
  `warning:` line per damaged checkpoint, then the refusal; and sampling from the next readable one."""
  corrupt_checkpoint(four_steps, 4)
  corrupt_checkpoint(four_steps, 2)
  result = run_main(four_steps, "--config.train.num_steps=6")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  assert [line.split(" is damaged")[0] for line in lines[:2]] == [
      f"warning: Checkpoint at step {s} in {four_steps}/checkpoints" for s in (4, 2)]
  assert lines[2].startswith(f"error: Every checkpoint in {four_steps}/checkpoints is damaged") and len(lines) == 3


def test_sampling_skips_a_damaged_checkpoint_in_one_line(four_steps):
  corrupt_checkpoint(four_steps, 4)
  result = run_main(four_steps, "--config.sample.respacing=3", "--config.sample.prompts=1",
                    "--config.sample.guidance_scales=1.0", mode="sample")
  assert result.returncode == 0, result.stderr[-3000:]
  # One warning line; beside it only the sampling progress bar.
  lines = [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip() and not line.startswith("sample:")]
  assert len(lines) == 1 and lines[0].startswith("warning: Checkpoint at step 4 "), result.stderr
  assert "(checkpoint step 2, EMA parameters)" in result.stdout


def test_resume_with_another_model_config_is_a_user_error(tmp_path):
  workdir = str(tmp_path / "run")
  train(tiny_config(num_steps=2), workdir)
  before = snapshot(workdir)
  config = tiny_config(num_steps=4)
  config.model.model_channels = 64
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    with pytest.raises(UserError) as info:
      train(config, workdir)
  message = str(info.value)
  assert "model.model_channels: 32 in the checkpoint, 64 now" in message, message
  assert "damaged" not in message
  assert not [w for w in record if "damaged" in str(w.message)]  # Not mistaken for a damaged checkpoint.
  assert_nothing_removed_or_changed(before, snapshot(workdir))


# ---------------------------------------------------------------------------------------------------------
# A resume with another training recipe (a changed config file's defaults, an override) is named, not silent.


def test_resume_with_another_recipe_says_so_and_trains_on(four_steps, capsys):
  config = tiny_config(num_steps=5, checkpoint_every=2, learning_rate=5e-4)
  train(config, four_steps)
  out = capsys.readouterr().out
  assert ("warning: this run continues with another training recipe than its checkpoint's: "
          "train.learning_rate: 0.001 in the checkpoint, 0.0005 now.") in out, out
  assert checkpoint_steps(four_steps)[-1] == 5


# ---------------------------------------------------------------------------------------------------------
# 4. One process writes each replicated array whole: a save compiles nothing.


def test_a_save_in_one_process_compiles_no_slicing_programs(tmp_path):
  """Orbax's replica-parallel writing slices every replicated array with a jitted program per shape (about
  60 compiles at a run's first save); in one process it gains nothing, so it is off."""
  mesh = sharding.make_mesh((-1, 1))
  assert mesh.devices.size == 2  # Replicated over two devices: what replica-parallel would split.
  replicated = NamedSharding(mesh, P())
  state = {"w": jax.device_put(np.arange(96, dtype=np.float32).reshape(8, 12), replicated),
           "b": jax.device_put(np.arange(10, dtype=np.float32) + 0.5, replicated)}
  compiles = []

  def count_compiles(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(count_compiles)
  try:
    with Checkpointer(str(tmp_path / "checkpoints")) as checkpointer:
      checkpointer.save_params(1, state, tiny_config())
  finally:
    jax.monitoring.unregister_event_duration_listener(count_compiles)
  assert compiles == []
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in state.items()}
  with Checkpointer(str(tmp_path / "checkpoints"), read_only=True) as reader:
    restored, _ = reader.restore({"params": abstract})
  for k in state:
    np.testing.assert_array_equal(np.asarray(restored["params"][k]), np.asarray(state[k]))


# ---------------------------------------------------------------------------------------------------------
# The checkpoint's items: sampling reads one parameter item; a model written alone has no optimizer state.


def _items(workdir, step):
  with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as checkpointer:
    return checkpointer.items(step)


def test_sampling_reads_one_parameter_item_and_builds_no_training_layout(four_steps_once):
  assert _items(four_steps_once, 4) == {"params", "ema_params", "training", "config"}
  state = restore_checkpoint(tiny_config(), four_steps_once)
  exp = Experiment(tiny_config(), four_steps_once)
  ema, step = exp.load_params(use_ema=True)
  raw, _ = exp.load_params(use_ema=False)
  assert step == int(state.step) == 4
  assert_trees_equal(jax.device_get(ema), state.ema_params)
  assert_trees_equal(jax.device_get(raw), state.params)
  assert not {"optimizer", "_sharded_init", "abstract_state"} & set(vars(exp))  # Built on first use only.


def test_a_model_written_alone_holds_its_parameters_only_and_trains_on_with_a_fresh_optimizer(four_steps_once,
                                                                                             tmp_path):
  ema, _ = Experiment(tiny_config(), four_steps_once).load_params()
  workdir = str(tmp_path / "alone")
  exp = Experiment(tiny_config(), workdir)
  exp.write_params(ema, step=4)
  assert _items(workdir, 4) == {"params", "config"}
  loaded, step = exp.load_params(use_ema=True)
  assert step == 4
  assert_trees_equal(jax.device_get(loaded), jax.device_get(ema))
  state = restore_checkpoint(tiny_config(), workdir)
  assert int(state.step) == 4 and int(state.nonfinite_streak) == 0
  assert_trees_equal(state.params, jax.device_get(ema))
  assert_trees_equal(state.ema_params, jax.device_get(ema))
  assert all(not np.any(leaf) for leaf in jax.tree_util.tree_leaves(state.opt_state))  # Adam's moments, fresh.


def test_a_checkpoint_of_the_single_item_layout_still_loads(four_steps_once, tmp_path):
  """Workdirs written before the items were split hold one `state` item; sampling reads its EMA alone."""
  config = tiny_config()
  exp = Experiment(config, four_steps_once)
  with exp.checkpointer(read_only=True) as checkpointer:
    state = exp.restore_state(checkpointer)
  workdir = str(tmp_path / "old")
  legacy = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "config"))
  legacy.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         config=ocp.args.JsonSave(config_to_json(config))))
  legacy.wait_until_finished()
  legacy.close()
  assert _items(workdir, 4) == {"state", "config"}
  old = Experiment(config, workdir)
  ema, step = old.load_params()
  assert step == 4
  assert_trees_equal(jax.device_get(ema), jax.device_get(state.ema_params))
  assert_trees_equal(restore_checkpoint(config, workdir), jax.device_get(state))


# ---------------------------------------------------------------------------------------------------------
# Closing waits for the clean-up of unfinished saves that opening read-write started.


def test_closing_waits_for_the_clean_up_that_opening_started(tmp_path, monkeypatch):
  """Orbax removes a killed run's unfinished save in a thread that only a save waits for; a process that opened
  read-write, saved nothing (a refused import) and exited printed that thread's traceback."""
  directory = tmp_path / "checkpoints"
  for entry in ("2", "4.orbax-checkpoint-tmp-1010101"):
    os.makedirs(directory / entry)
  checked, islink = [], os.path.islink

  def slow_islink(path):  # Orbax asks this of every entry; slowed, the thread outlives an unwaited close().
    time.sleep(0.2)
    checked.append(os.path.basename(path))
    return islink(path)

  monkeypatch.setattr(os.path, "islink", slow_islink)
  with Checkpointer(str(directory)):
    pass
  assert sorted(checked) == ["2", "4.orbax-checkpoint-tmp-1010101"]
  assert sorted(os.listdir(directory)) == ["2"]
