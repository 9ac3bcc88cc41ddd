"""Multi-controller training on CPU through main.py: 2 processes x 2 devices (gloo collectives) against
this test process's devices, and a checkpoint written on 8 devices restored here and trained on."""

import json
import os
import re
import socket

import jax
import numpy as np
import pytest

from configs import tiny
from glide_jax.experiment import Experiment
from glide_jax.modes.train import run as train
from helpers.paths import REPO
from helpers.runs import main_env, main_server, read
from helpers.xla import xla_flags

TIMEOUT_S = 480  # Per launch; about a minute each on an idle 2-core machine.
OVERRIDES = {"train.log_every": 1, "train.checkpoint_every": 2, "train.keep_checkpoints": 10,
             "train.sample_every": 2}  # The sampler runs across processes too (gathered on every host).


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, num_steps, num_processes, devices_per_process, mesh="(-1, 1)"):
  """Starts every process of one job with main.py and waits for all (killing them on a timeout)."""
  env = dict(main_env(), XLA_FLAGS=xla_flags(devices_per_process))
  args = ["--config=" + os.path.join(REPO, "configs", "tiny.py"), f"--workdir={workdir}",
          f"--config.train.num_steps={num_steps}", f"--config.mesh.shape={mesh}"]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  if num_processes > 1:
    args += [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={num_processes}"]
  logs = [f"{workdir}.process{i}.log" for i in range(num_processes)]  # Beside the workdir: not in it.
  procs = [main_server().start(args + ([f"--process_id={i}"] if num_processes > 1 else []), stdout=log, stderr=log,
                               env=env) for i, log in enumerate(logs)]
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      p.kill()
  outputs = [read(log) for log in logs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows], [r["loss"] for r in rows]


def tiny_config(num_steps):
  config = tiny.get_config()
  config.update_from_flattened_dict(OVERRIDES)
  config.train.num_steps = num_steps
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  two, one = root / "two_processes", root / "one_process"
  first = launch(two, 4, num_processes=2, devices_per_process=2)
  checkpoints_after_first = sorted(os.listdir(two / "checkpoints"))
  resumed = launch(two, 6, num_processes=2, devices_per_process=2)
  # The reference trains here, on the suite's devices (tests/helpers/xla.py): programs the rest of the suite
  # compiles, not another launch.
  train(tiny_config(6), str(one))
  return dict(two=two, one=one, first=first, resumed=resumed, checkpoints_after_first=checkpoints_after_first)


def test_every_process_joins_the_global_mesh(runs):
  for i, out in enumerate(runs["first"]):
    assert f"JAX process {i} of 2: 2 local devices, 4 in all." in out


def test_loss_trajectory_matches_one_process_with_the_suites_devices(runs):
  steps_two, loss_two = losses(runs["two"])
  steps_one, loss_one = losses(runs["one"])
  assert steps_two == steps_one == [1, 2, 3, 4, 5, 6]  # Only process 0 logs: no line is written twice.
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)


def test_one_copy_of_each_checkpoint_and_outputs_from_process_zero_only(runs):
  two = runs["two"]
  assert runs["checkpoints_after_first"] == ["2", "4"]
  assert sorted(os.listdir(two / "checkpoints"), key=int) == ["2", "4", "6"]
  assert len(os.listdir(two / "tensorboard")) == 2  # One event file per launch, both from process 0.
  assert sorted(os.listdir(two / "samples")) == [f"train_step_{s:07d}.png" for s in (2, 4, 6)]


def test_restarting_both_processes_resumes_from_the_checkpoint(runs):
  first, resumed = runs["first"], runs["resumed"]
  assert "Resuming from the checkpoint at step 4" in resumed[0]
  assert not any("Resuming" in out for out in (first[0], first[1], resumed[1]))  # Process 1 prints none.
  assert re.search(r"6/6 \[", resumed[0]) and not re.search(r"\d+/\d+ \[", resumed[1])  # One progress bar.


def test_checkpoint_from_eight_devices_restores_here_and_continues(runs, tmp_path):
  """Saved with params and Adam state split over fsdp=2 on 8 devices; resumed on this process's mesh."""
  launch(tmp_path, 4, num_processes=1, devices_per_process=8, mesh="(4, 2)")
  config = tiny_config(6)
  exp = Experiment(config, str(tmp_path))
  with exp.checkpointer(read_only=True) as checkpointer:
    restored = exp.restore_or_init(checkpointer)
  assert int(restored.step) == 4
  for leaf in jax.tree_util.tree_leaves((restored.params, restored.opt_state)):
    assert leaf.sharding.mesh.devices.size == len(jax.devices())  # Laid out on the current mesh.
  state = train(config, str(tmp_path))
  assert int(state.step) == 6
  steps, loss = losses(tmp_path)
  assert steps == [1, 2, 3, 4, 5, 6]
  # The same config and seed on any topology gives the same numbers, before and after the move.
  np.testing.assert_allclose(loss, losses(runs["one"])[1], rtol=1e-5)
