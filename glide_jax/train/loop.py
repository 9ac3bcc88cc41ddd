"""The training loop around the jitted step: batches, checkpoints, logging, sample grids and clean stops."""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from glide_jax import sharding as sharding_lib
from glide_jax.errors import TrainingDivergedError
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import images as images_lib
from glide_jax.train.metrics_writer import MetricWriter
from glide_jax.train.preemption import PreemptionGuard
from glide_jax.train.step import TrainState


def _progress_bar(start: int, total: int):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm
  return tqdm(initial=start, total=total, desc="train", unit="step", dynamic_ncols=True)


class TrainingSampler:
  """Writes a one-per-class sample grid (EMA parameters) to workdir/samples and TensorBoard."""

  def __init__(self, exp: Experiment, class_names, workdir: str):
    self.exp, self.prompts = exp, list(class_names)
    self.sampler = exp.make_sampler("ddpm", exp.config.train.sample_respacing)
    self.out_dir = os.path.join(workdir, "samples")

  def __call__(self, state: TrainState, step: int, writer: MetricWriter) -> None:
    grid = self.exp.sample_grid(self.sampler, state.ema_params, self.prompts, [self.exp.config.train.sample_guidance],
                                1, stream_key(self.exp.config.seed, "sample"))
    image = images_lib.make_grid(grid[:, 0, 0], rows=1, cols=len(self.prompts))
    if jax.process_index() == 0:
      os.makedirs(self.out_dir, exist_ok=True)
      images_lib.save_png(os.path.join(self.out_dir, f"train_step_{step:07d}.png"), image)
      writer.write_image(step, "samples", image)


def _summarize(pending: list[dict[str, jax.Array]], seconds: float) -> dict[str, float]:
  summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
  summary["nonfinite"] *= len(pending)  # A count per logging window, not a fraction.
  summary["steps_per_sec"] = len(pending) / seconds
  return summary


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the latest checkpoint in workdir) until config.train.num_steps; returns the state.

  SIGTERM or SIGINT finishes the current step, saves a checkpoint there and returns early. Everything the
  config, the devices and the dataset can get wrong is reported before the workdir is touched.
  """
  exp = Experiment(config, workdir)
  t = config.train
  step_fn = exp.train_step_fn()
  batches = exp.batch_source()
  workdir = exp.open_workdir(create=True)
  checkpointer = exp.checkpointer()
  state = exp.restore_or_init(checkpointer)
  start = int(jax.device_get(state.step))
  is_main = jax.process_index() == 0
  if start and is_main:
    print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}", flush=True)
  sampler = TrainingSampler(exp, batches.dataset.class_names, workdir) if t.sample_every else None
  train_rng = exp.train_rng
  writer = MetricWriter(workdir)
  bar = _progress_bar(start, t.num_steps)
  pending: list[dict[str, jax.Array]] = []
  if start < t.num_steps and jax.process_count() > 1:  # (The first batch is built only where it is needed.)
    step_fn = sharding_lib.compiled_for_all_processes(
        step_fn, state, sharding_lib.put_batch(batches(start), exp.mesh), train_rng)
  last_streak = state.nonfinite_streak.copy()  # (The state itself is donated to the step.)
  window_start = time.perf_counter()
  try:
    with PreemptionGuard() as guard:
      for step in range(start, t.num_steps):
        batch = sharding_lib.put_batch(batches(step), exp.mesh)
        state, metrics = step_fn(state, batch, train_rng)
        # The previous step's streak is read after this step is dispatched, so the check never stalls.
        streak, last_streak = last_streak, metrics.pop("nonfinite_streak")
        if int(streak) >= t.max_nonfinite_steps:
          raise TrainingDivergedError(
              f"The loss or gradients were not finite for {int(streak)} steps in a row (up to step {step}); "
              f"those steps were skipped and training stopped. The last checkpoint in "
              f"{checkpointer.directory} (step {checkpointer.latest_step()}) is kept. Lower "
              f"config.train.learning_rate or check the data, then rerun to resume from it.")
        pending.append(metrics)
        done = step + 1
        if guard.should_stop(done):
          checkpointer.save(done, state, config)
          checkpointer.wait()
          if is_main:
            print(f"Stopped by {guard.reason} after step {done}: checkpoint saved in {checkpointer.directory}; "
                  f"rerun the same command to resume.", flush=True)
          break
        if done % t.checkpoint_every == 0 or done == t.num_steps:
          checkpointer.save(done, state, config)
        if done % t.log_every == 0 or done == t.num_steps:
          summary = _summarize(pending, time.perf_counter() - window_start)
          writer.write_scalars(done, summary)
          if bar is not None:
            bar.set_postfix(loss=f"{summary['loss']:.4f}", mse=f"{summary['mse']:.4f}",
                            steps_per_s=f"{summary['steps_per_sec']:.2f}", refresh=False)
          pending, window_start = [], time.perf_counter()
        if sampler is not None and (done % t.sample_every == 0 or done == t.num_steps):
          sampler(state, done, writer)
          window_start = time.perf_counter()
        if bar is not None:
          bar.update(1)
  finally:
    if bar is not None:
      bar.close()
    checkpointer.close()
    writer.close()
  return state
