"""Stopping and killing training: SIGTERM saves the step it finished; SIGKILL at random moments (some in
the middle of a checkpoint save) still ends bit-identical to a run that was never interrupted."""

import random
import re
import signal
import time

from helpers.runs import (
  checkpoint_steps,
  metric_steps,
  popen_main,
  progress_counts,
  read,
  restore_checkpoint,
  resumed_from,
  run_main,
  tiny_config,
  tmp_checkpoints,
  wait_until,
)
from helpers.trees import assert_trees_equal

# ---------------------------------------------------------------------------------------------------------
# 1. SIGTERM: finish the step, save, say so in one line, exit 0; the rerun resumes there.


def test_sigterm_saves_the_current_step_and_the_rerun_resumes_there(tmp_path):
  workdir = tmp_path / "run"
  flags_ = ["--config.train.checkpoint_every=1000", "--config.train.log_every=2"]
  proc = popen_main(workdir, str(tmp_path / "first"), "--config.train.num_steps=10000", *flags_)

  def once_stepping():
    stepping = wait_until(lambda: metric_steps(workdir) or proc.poll() is not None, timeout=300)
    assert stepping and proc.poll() is None, read(tmp_path / "first.err")[-3000:]

  rc = sigterm_when(proc, once_stepping)
  out, err = read(tmp_path / "first.out"), read(tmp_path / "first.err")
  assert rc == 0, err[-3000:]
  assert "Traceback" not in err
  lines = [line for line in out.splitlines() if "Stopped by" in line]
  assert len(lines) == 1, out
  match = re.fullmatch(r"Stopped by SIGTERM after step (\d+): checkpoint saved in (.+); rerun the same command "
                       r"to resume\.", lines[0])
  assert match, lines[0]
  n = int(match.group(1))
  assert match.group(2) == str(workdir / "checkpoints")
  logged = metric_steps(workdir)
  assert logged[-1] == n and n < 1000  # The last finished step (its metrics row too), not a periodic save.
  assert checkpoint_steps(workdir) == [n]
  assert not tmp_checkpoints(workdir)

  result = run_main(workdir, f"--config.train.num_steps={n + 3}", *flags_)
  assert result.returncode == 0, result.stderr[-3000:]
  assert resumed_from(result.stdout) == [n], result.stdout
  assert checkpoint_steps(workdir) == [n, n + 3]
  assert metric_steps(workdir)[-1] == n + 3


def test_sigterm_before_the_first_step_says_so_and_saves_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = popen_main(workdir, str(tmp_path / "early"), "--config.train.num_steps=5", fresh=True)
  rc = sigterm_when(proc, lambda: time.sleep(1.0))  # Still importing or building: seconds before any step.
  out, err = read(tmp_path / "early.out"), read(tmp_path / "early.err")
  assert rc == 0, err[-3000:]
  assert "Traceback" not in err
  assert "Stopped by SIGTERM before the first step; nothing new to save. Rerun the same command to" in out, out
  assert checkpoint_steps(workdir) == [] and metric_steps(workdir) == []


def sigterm_when(proc, ready) -> int:
  """SIGTERM to `proc` once `ready()` returns, then its exit code; it is killed if anything goes wrong."""
  try:
    ready()
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


# ---------------------------------------------------------------------------------------------------------
# 2. SIGKILL at random moments (some in the middle of a checkpoint save): the end result is bit-exact.

CHAOS_STEPS = 40
CHAOS_FLAGS = [f"--config.train.num_steps={CHAOS_STEPS}", "--config.train.checkpoint_every=4",
               "--config.train.keep_checkpoints=3", "--config.train.log_every=4"]
CHAOS_KILLS = 5


def _kill_at_random(proc, workdir, err_path, rng, start, during_save):
  """SIGKILLs a run once it has saved a new checkpoint (so every run makes progress): as soon as its next
  save is in flight (during_save), or a seeded random number of steps and seconds later. None if the run
  ended first."""
  def ended_or(predicate):
    return lambda: proc.poll() is not None or predicate()
  assert wait_until(ended_or(lambda: max(checkpoint_steps(workdir), default=0) > start), timeout=300,
                    interval=0.01), read(err_path)[-3000:]
  if during_save:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not tmp_checkpoints(workdir):
      time.sleep(0.001)
  else:
    target = max(progress_counts(err_path), default=0) + rng.randint(0, 3)
    assert wait_until(ended_or(lambda: max(progress_counts(err_path), default=0) >= target), timeout=120,
                      interval=0.01)
    end = time.monotonic() + rng.uniform(0.0, 0.3)
    while proc.poll() is None and time.monotonic() < end:
      time.sleep(0.005)
  if proc.poll() is not None:
    return None
  in_save = bool(tmp_checkpoints(workdir))
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  counts = progress_counts(err_path)
  return {"during_save": during_save, "tmp_left": bool(tmp_checkpoints(workdir)) and in_save,
          "progress": counts[-1] if counts else None, "checkpoints": checkpoint_steps(workdir)}


def test_sigkill_at_random_moments_resumes_bit_exactly(tmp_path):
  straight, chaos = tmp_path / "straight", tmp_path / "chaos"
  reference = popen_main(straight, str(tmp_path / "straight"), *CHAOS_FLAGS)  # Runs alongside.
  try:
    rng = random.Random(20240611)
    kills, resumes = [], []
    for i in range(CHAOS_KILLS + 1):
      before = checkpoint_steps(chaos)
      prefix = str(tmp_path / f"run{i}")
      proc = popen_main(chaos, prefix, *CHAOS_FLAGS)
      try:
        if i < CHAOS_KILLS:
          kill = _kill_at_random(proc, chaos, prefix + ".err", rng, max(before, default=0), during_save=i in (1, 3))
          assert kill is not None, f"run {i} finished before its kill; the kills are too late: {kills}"
          kills.append(kill)
        else:
          assert proc.wait(timeout=300) == 0, read(prefix + ".err")[-3000:]
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
      # Every restart after a checkpoint existed resumed from the newest one, never from step 0.
      resumed = resumed_from(read(prefix + ".out"))
      assert resumed == ([max(before)] if before else []), (i, before, resumed, kills)
      resumes += resumed

    assert reference.wait(timeout=300) == 0, read(tmp_path / "straight.err")[-3000:]
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()
  assert any(k["tmp_left"] for k in kills), f"no kill landed in the middle of a checkpoint save: {kills}"
  assert len(resumes) == CHAOS_KILLS and resumes == sorted(set(resumes)), (resumes, kills)  # Always onwards.
  assert not tmp_checkpoints(chaos)
  assert checkpoint_steps(chaos) == checkpoint_steps(straight) == [32, 36, 40]

  config = tiny_config(num_steps=CHAOS_STEPS, checkpoint_every=4, keep_checkpoints=3, log_every=4)
  a, b = restore_checkpoint(config, chaos), restore_checkpoint(config, straight)
  assert int(a.step) == int(b.step) == CHAOS_STEPS
  assert_trees_equal(a.params, b.params)
  assert_trees_equal(a.ema_params, b.ema_params)
  assert_trees_equal(a.opt_state, b.opt_state)
  assert int(a.nonfinite_streak) == int(b.nonfinite_streak) == 0


