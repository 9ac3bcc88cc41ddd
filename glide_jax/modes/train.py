"""The training loop around the jitted step: batches, checkpoints, logging, sample grids and clean stops."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time

import jax
import ml_collections
import numpy as np

from glide_jax import saved_config
from glide_jax import sharding as sharding_lib
from glide_jax.config import default_config
from glide_jax.errors import TrainingDivergedError
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.run import Run
from glide_jax.sampling import images as images_lib
from glide_jax.sampling.guided import SamplerSpec
from glide_jax.train.metrics_writer import MetricsWindow, MetricWriter
from glide_jax.train.preemption import PreemptionGuard
from glide_jax.train.step import TrainState
from glide_jax.train.workdir_lock import WorkdirLock


def _progress_bar(start: int, total: int):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm
  return tqdm(initial=start, total=total, desc="train", unit="step", dynamic_ncols=True)


class TrainingSampler:
  """Writes a sample grid (EMA parameters; one per class, or the data's first captions) to workdir/samples and
  TensorBoard."""

  def __init__(self, exp: Experiment, prompts: list[str], workdir: str):
    self.exp, self.prompts = exp, list(prompts)
    self.sampler = exp.sampler(spec=SamplerSpec(respacing=exp.config.train.sample_respacing))
    self.out_dir = os.path.join(workdir, "samples")

  def __call__(self, state: TrainState, step: int, writer: MetricWriter) -> None:
    grid = self.exp.sample_grid(self.sampler.bind(state.ema_params), self.prompts,
                                [self.exp.config.train.sample_guidance], 1, stream_key(self.exp.config.seed, "sample"))
    image = images_lib.make_grid(grid[:, 0, 0], rows=1, cols=len(self.prompts))
    if jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      images_lib.save_png(os.path.join(self.out_dir, f"train_step_{step:07d}.png"), image)
      writer.write_image(step, "samples", image)


# Above this, a tenth of the learning rate would diverge again: Adam trains the UNet at about 1e-4 to 1e-3.
MAX_USEFUL_LEARNING_RATE = 1e-2


def lower_learning_rate(learning_rate: float) -> float:
  """A tenth of the learning rate, or the default one when a tenth would still be far too high."""
  lower = learning_rate / 10
  return lower if lower <= MAX_USEFUL_LEARNING_RATE else float(default_config().train.learning_rate)


def recovery_command(learning_rate: float) -> str:
  """The command line that resumes this run with a lower learning rate (generic outside main.py)."""
  lower = f"--config.train.learning_rate={lower_learning_rate(learning_rate):g}"
  if not sys.argv or os.path.basename(sys.argv[0]) != "main.py":
    return f"the same command with {lower}"
  kept = [a for a in sys.argv if not a.startswith("--config.train.learning_rate")]
  return shlex.join(["python", *kept, lower])


def diverged_error(streak: int, step: int, config: ml_collections.ConfigDict, checkpoint_dir: str,
                   last_checkpoint: int | None, resumed_from: int) -> TrainingDivergedError:
  """What happened, which checkpoint is safe, and the command that recovers."""
  what = (f"The loss or gradients were not finite for {streak} steps in a row (up to step {step}); those steps "
          f"were skipped and training stopped, and no checkpoint was saved during them.")
  lr = config.train.learning_rate
  why = "" if lower_learning_rate(lr) == lr / 10 else (
      f" (a tenth of {lr:g} would still be far above what Adam trains this model with, so the default)")
  fix = f"run {recovery_command(lr)}{why} (or check the data)."
  if last_checkpoint is None:
    return TrainingDivergedError(f"{what} There is no checkpoint yet; to start again with a lower learning rate, {fix}")
  hint = ""
  if last_checkpoint == resumed_from and step - last_checkpoint <= streak:
    hint = (f" This run diverged right after resuming from that checkpoint, so its parameters may themselves be "
            f"diverged: if a lower learning rate does not help, move {checkpoint_dir}/{last_checkpoint} aside to "
            f"resume from the one before it.")
  return TrainingDivergedError(f"{what} The last checkpoint in {checkpoint_dir} (step {last_checkpoint}) is from "
                               f"before them and is kept. To resume from it with a lower learning rate, {fix}{hint}")


def run(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the latest checkpoint in workdir) until config.train.num_steps; returns the state.

  SIGTERM or SIGINT finishes the current step, saves a checkpoint there and returns early (before the
  first step: returns at once). Everything the config, the devices and the dataset can get wrong is
  reported before the workdir is touched.
  """
  return train(Experiment(config, workdir))


def train(exp: Run) -> TrainState:
  """`run` for a Run already built: a diffusion model's Experiment, or a noised CLIP's (glide_jax.clip.experiment)."""
  with PreemptionGuard() as guard:
    return _train(exp, guard)


def _train(exp: Run, guard: PreemptionGuard) -> TrainState:
  step_fn = exp.train_step_fn()
  batches = exp.batch_source()
  workdir = exp.open_workdir(create=True)
  is_main = jax.process_index() == 0
  # Before the checkpoint manager, which removes unfinished checkpoint directories: another trainer's.
  with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    return _train_locked(exp, workdir, step_fn, batches, guard)


def _train_locked(exp: Run, workdir: str, step_fn, batches, guard: PreemptionGuard) -> TrainState:
  """Restores or initialises the state, then trains unless there is nothing to do or a stop came first."""
  t = exp.config.train
  is_main = jax.process_index() == 0
  with exp.checkpointer() as checkpointer:
    state = exp.restore_or_init(checkpointer)
    start = int(jax.device_get(state.step))
    if start:
      # Every process reads the saved config: an Orbax restore waits for all of them.
      changed = saved_config.recipe_differences(checkpointer.saved_config(start), exp.config)
      if is_main:
        print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}", flush=True)
        if changed:
          print(f"warning: this run continues with another training recipe than its checkpoint's: "
                f"{'; '.join(changed)}. To continue it as it was, pass the checkpoint's values as overrides.",
                flush=True)
    if start >= t.num_steps:
      if is_main:
        print(f"Nothing to train: the run in {workdir} is at step {start}, and config.train.num_steps is "
              f"{t.num_steps}. Raise --config.train.num_steps to train it further.", flush=True)
      return state
    if guard.should_stop(start):
      if is_main:
        print(f"Stopped by {guard.reason} before the first step; nothing new to save. Rerun the same command to "
              f"{'resume' if start else 'start'}.", flush=True)
      return state
    return _train_steps(exp, state, start, step_fn, batches, checkpointer, guard, workdir)


def _train_steps(exp: Run, state: TrainState, start: int, step_fn, batches, checkpointer, guard,
                 workdir: str) -> TrainState:
  """The loop from step `start` to num_steps: steps, checkpoints, metrics, sample grids and clean stops."""
  config, t = exp.config, exp.config.train
  is_main = jax.process_index() == 0
  sampler = None
  if t.sample_every and exp.samples_while_training:
    sampler = TrainingSampler(exp, batches.dataset.sample_prompts(), workdir)
  train_rng = exp.train_rng
  writer = MetricWriter(workdir)
  bar = _progress_bar(start, t.num_steps)
  # Compiled before the first step (from the persistent cache when an earlier run compiled it), so the time
  # is reported apart from the steps: in the first metrics row as compile_s.
  compile_start = time.perf_counter()
  step_fn = sharding_lib.compiled_for_all_processes(
      step_fn, state, sharding_lib.put_batch(batches(start), exp.mesh), train_rng)
  window = MetricsWindow(writer, bar, compile_s=time.perf_counter() - compile_start)

  # A resumed run starts a fresh streak (checkpoints are only written after finite steps, but older ones
  # may carry one).
  state = state.replace(nonfinite_streak=jax.device_put(np.zeros((), np.int32), state.nonfinite_streak.sharding))
  last_streak = state.nonfinite_streak.copy()  # (The state itself is donated to the step.)
  done = start
  try:
    for step in range(start, t.num_steps):
      batch = sharding_lib.put_batch(batches(step), exp.mesh)
      state, metrics = step_fn(state, batch, train_rng)
      # The previous step's streak is read after this step is dispatched, so the check never stalls.
      streak, last_streak = last_streak, metrics.pop("nonfinite_streak")
      if int(streak) >= t.max_nonfinite_steps:
        window.write(step)
        checkpointer.wait()
        raise diverged_error(int(streak), step, config, checkpointer.directory, checkpointer.latest_step(), start)
      window.add(metrics)
      done = step + 1
      stopping = guard.should_stop(done)
      skipped = 0
      if stopping or done % t.checkpoint_every == 0 or done == t.num_steps:
        # Never a checkpoint in a non-finite streak: retention would rotate out the good ones before it.
        skipped = int(last_streak)
        if skipped:
          print(f"No checkpoint at step {done}: the last {skipped} steps were not finite (skipped); the "
                f"checkpoint at step {checkpointer.latest_step()} is kept.", file=sys.stderr, flush=True)
        else:
          checkpointer.save(done, state, config)
      if stopping or done % t.log_every == 0 or done == t.num_steps:
        window.write(done)
      if stopping:
        checkpointer.wait()
        if is_main:
          saved = f"latest checkpoint: step {checkpointer.latest_step()}" if skipped else "checkpoint saved"
          print(f"Stopped by {guard.reason} after step {done}: {saved} in {checkpointer.directory}; "
                f"rerun the same command to resume.", flush=True)
        break
      if sampler is not None and (done % t.sample_every == 0 or done == t.num_steps):
        sampler(state, done, writer)
        window.restart_clock()
      if bar is not None:
        bar.update(1)
  finally:
    try:
      if bar is not None:
        bar.close()
      checkpointer.wait()  # Raises a failed background save (a full disk): the writer is closed all the same.
    finally:
      writer.close()
  return state
