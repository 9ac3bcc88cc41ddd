"""One trainer per workdir: a second exits 2 within seconds naming the first, and the first finishes with its
own checkpoints and metrics; sampling runs beside it; a killed trainer leaves no stuck lock."""

import os
import re
import signal
import time

import pytest

from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.modes.train import run as train
from glide_jax.train.workdir_lock import LOCK_NAME, WorkdirLock
from helpers.runs import (
  assert_nothing_removed_or_changed,
  checkpoint_steps,
  metric_steps,
  popen_main,
  read,
  restore_checkpoint,
  run_main,
  snapshot,
  tiny_config,
  wait_until,
)


def test_a_held_lock_refuses_training_and_touches_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  train(tiny_config(num_steps=2), workdir)
  before = snapshot(workdir)
  with WorkdirLock(workdir):
    with pytest.raises(UserError, match=rf"Another training run \(process {os.getpid()} on .+\) is using "
                                        rf"--workdir {re.escape(workdir)}"):
      train(tiny_config(num_steps=4), workdir)
  assert_nothing_removed_or_changed(before, snapshot(workdir))
  assert read(os.path.join(workdir, LOCK_NAME)) == ""  # Released and emptied.
  with WorkdirLock(workdir):  # Free again.
    pass


def test_two_trainers_on_one_workdir(tmp_path):
  workdir = tmp_path / "run"
  flags_ = ["--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3", "--config.train.log_every=1"]
  # Runs until stopped, so it is surely still training when the second starts (ten steps once ended first).
  first = popen_main(workdir, str(tmp_path / "first"), "--config.train.num_steps=100000", *flags_)
  try:
    assert wait_until(lambda: checkpoint_steps(workdir) or first.poll() is not None, timeout=300)
    assert first.poll() is None, read(tmp_path / "first.err")[-3000:]
    # Paused, it still holds the lock, and leaves the cores to the second trainer and the sampler.
    first.send_signal(signal.SIGSTOP)
    before_pause = len(metric_steps(workdir))
    t0 = time.monotonic()
    second = run_main(workdir, "--config.train.num_steps=10", *flags_)
    assert second.returncode == 2, second.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert re.search(rf"error: Another training run \(process {first.pid} on .+\) is using --workdir {workdir}",
                     second.stderr), second.stderr
    assert "Traceback" not in second.stderr
    sample = run_main(workdir, "--config.sample.respacing=3", "--config.sample.prompts=1",
                      "--config.sample.guidance_scales=1.0", mode="sample")
    assert sample.returncode == 0, sample.stderr[-3000:]
    first.send_signal(signal.SIGCONT)
    assert first.poll() is None, read(tmp_path / "first.err")[-3000:]
    assert wait_until(lambda: len(metric_steps(workdir)) > before_pause, timeout=120)  # Training again.
    first.send_signal(signal.SIGTERM)  # Saves the step it is on and exits 0 (tests/train/test_preemption.py).
    assert first.wait(timeout=120) == 0, read(tmp_path / "first.err")[-3000:]
  finally:
    if first.poll() is None:
      first.send_signal(signal.SIGCONT)
      first.send_signal(signal.SIGKILL)
      first.wait()
  last = metric_steps(workdir)[-1]
  assert metric_steps(workdir) == list(range(1, last + 1))  # Its own steps, once each.
  kept = sorted({*range(2, last + 1, 2), last})[-3:]  # Every second step and the stop, the newest three.
  assert checkpoint_steps(workdir) == kept
  for step in kept:
    assert int(restore_checkpoint(tiny_config(), workdir, step=step).step) == step


def test_a_killed_trainer_leaves_no_stuck_lock(tmp_path):
  workdir = tmp_path / "run"
  proc = popen_main(workdir, str(tmp_path / "killed"), "--config.train.num_steps=10000")
  try:
    assert wait_until(lambda: os.path.exists(workdir / LOCK_NAME) and read(workdir / LOCK_NAME), timeout=300)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert read(workdir / LOCK_NAME).startswith(f"process {proc.pid} ")  # Stale text, but no lock behind it.
  with WorkdirLock(str(workdir)):
    assert read(workdir / LOCK_NAME).startswith(f"process {os.getpid()} ")


def test_writing_a_model_into_a_live_trainers_workdir_is_refused_and_leaves_its_save_alone(tmp_path):
  """The converter and carry_params import write through Experiment.write_params. Beside a trainer (its lock
  held, a save in flight) they opened its checkpoints read-write, and Orbax's start-up clean-up deleted the
  save in flight (the trainer then died); now they are refused first."""
  workdir = tmp_path / "run"
  in_flight = workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1796280000"
  in_flight.mkdir(parents=True)
  exp = Experiment(tiny_config(), str(workdir))
  params = exp.init_fn().params
  with WorkdirLock(str(workdir)):
    with pytest.raises(UserError, match=r"is using --workdir .*Wait for it to finish"):
      exp.write_params(params)
  assert in_flight.is_dir() and checkpoint_steps(workdir) == []
