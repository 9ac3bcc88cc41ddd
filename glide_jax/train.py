"""train_and_evaluate: the training loop around the jitted step (data, checkpoints, logging)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from glide_jax import checkpoint as ckpt_lib
from glide_jax import data as data_lib
from glide_jax import sharding as sharding_lib
from glide_jax.config import num_microbatches, validate_config
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.errors import TrainingDivergedError, UserError
from glide_jax.metrics_writer import MetricWriter
from glide_jax.model import Text2ImUNet, create_model
from glide_jax.preemption import PreemptionGuard
from glide_jax.tokenizer import Tokenizer, get_tokenizer
from glide_jax.train_step import TrainState, make_optimizer, make_sharded_init, make_sharded_train_step


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir; a path that is a file or not writable is a user error."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} is a file, not a directory; pass a directory path.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create --workdir {workdir}: {e.strerror}. Pass a writable directory.") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"--workdir {workdir} is not writable; pass a directory you can write to.")
  return workdir


@dataclasses.dataclass
class Experiment:
  """Everything a config determines, built once: model, maths, tokenizer, mesh and state layout."""

  config: ml_collections.ConfigDict
  model: Text2ImUNet
  diffusion: GaussianDiffusion
  tokenizer: Tokenizer
  mesh: jax.sharding.Mesh
  optimizer: Any
  init_fn: Any
  state_shardings: Any
  abstract_state: Any

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh: Optional[jax.sharding.Mesh] = None) -> "Experiment":
    validate_config(config)
    mesh = mesh if mesh is not None else sharding_lib.make_mesh(config.mesh.shape)
    model = create_model(config)
    optimizer = make_optimizer(config)
    init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    init_fn, shardings = make_sharded_init(mesh, model, optimizer, init_rng)
    abstract = ckpt_lib.abstract_with_shardings(jax.eval_shape(init_fn), shardings)
    return cls(config=config, model=model,
               diffusion=GaussianDiffusion.from_schedule(config.diffusion.noise_schedule,
                                                         config.diffusion.num_timesteps),
               tokenizer=get_tokenizer(config.model.tokenizer), mesh=mesh, optimizer=optimizer, init_fn=init_fn,
               state_shardings=shardings, abstract_state=abstract)

  def checkpointer(self, workdir: str, read_only: bool = False) -> ckpt_lib.Checkpointer:
    t = self.config.train
    return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints,
                                 read_only=read_only)

  def restore_or_init(self, checkpointer: ckpt_lib.Checkpointer) -> TrainState:
    """The latest readable checkpoint (older ones if the latest is damaged), or a fresh state if none."""
    if checkpointer.latest_step() is None:
      return self.init_fn()
    check = lambda saved: ckpt_lib.check_same_model(saved, self.config, checkpointer.directory)
    state, _ = checkpointer.restore_latest_readable(self.abstract_state, check)
    return state

  def train_step_fn(self):
    return make_sharded_train_step(self.mesh, self.state_shardings, model=self.model, diffusion=self.diffusion,
                                   optimizer=self.optimizer, config=self.config, pad_id=self.tokenizer.pad_id)

  def batch_source(self) -> data_lib.BatchSource:
    c = self.config
    dataset = data_lib.load_dataset(c.data)
    return data_lib.BatchSource(dataset, self.tokenizer, c.model.text_ctx, c.data.prompt_templates,
                                c.train.batch_size, c.seed, jax.process_index(), jax.process_count())


def _progress_bar(start: int, total: int):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm
  return tqdm(initial=start, total=total, desc="train", unit="step", dynamic_ncols=True)


class TrainingSampler:
  """Writes a one-per-class sample grid (EMA parameters) to workdir/samples and TensorBoard."""

  def __init__(self, exp: Experiment, class_names, workdir: str):
    from glide_jax.sampling import GuidedSampler
    c = exp.config
    self.exp, self.prompts = exp, list(class_names)
    self.sampler = GuidedSampler(exp.model, exp.diffusion, "ddpm", c.train.sample_respacing, 0.0,
                                 exp.tokenizer.pad_id, exp.mesh)
    self.out_dir = os.path.join(workdir, "samples")

  def __call__(self, state: TrainState, step: int, writer: MetricWriter) -> None:
    from glide_jax import images as images_lib
    from glide_jax.sample_main import sample_grid
    grid = sample_grid(self.exp, state.ema_params, self.prompts, [self.exp.config.train.sample_guidance], 1,
                       jax.random.key(self.exp.config.seed), self.sampler)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the latest checkpoint in workdir) until config.train.num_steps; returns the state.

  SIGTERM or SIGINT finishes the current step, saves a checkpoint there and returns early.
  """
  workdir = prepare_workdir(workdir)
  exp = Experiment.from_config(config)
  t = config.train
  sharding_lib.check_batch_divisible(t.batch_size, exp.mesh, microbatches=num_microbatches(t))
  batches = exp.batch_source()
  checkpointer = exp.checkpointer(workdir)
  state = exp.restore_or_init(checkpointer)
  start = int(jax.device_get(state.step))
  is_main = jax.process_index() == 0
  if start and is_main:
    print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}", flush=True)
  step_fn = exp.train_step_fn()
  sampler = TrainingSampler(exp, batches.dataset.class_names, workdir) if t.sample_every else None
  train_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
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
