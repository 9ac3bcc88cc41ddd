"""A run: a validated config's workdir, its Orbax checkpoints and its training state's layout on a device mesh.

What every kind of model trained here shares: a diffusion model's `Experiment` (glide_jax.experiment) and a
noised CLIP's `ClipExperiment` (glide_jax.clip.experiment) are Runs. A subclass gives the model: its
parameters' initialisation (`_sharded_init`, `abstract_params`), which saved fields must match
(`_check_same_model`), its update (`train_step_fn`) and its batches (`batch_source`): what the training loop
(glide_jax.modes.train) runs, besides the sample grids that only a diffusion model draws.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Optional

import jax
import ml_collections
import optax

from glide_jax import sharding as sharding_lib
from glide_jax.config import default_config, num_microbatches
from glide_jax.errors import UserError
from glide_jax.rng import stream_key
from glide_jax.saved_config import config_from_json
from glide_jax.train import checkpoint as ckpt_lib
from glide_jax.train import programs
from glide_jax.train.step import ShardedInit, TrainState, init_state_from_params, make_optimizer
from glide_jax.train.workdir_lock import WorkdirLock


def mesh_the_batch_fits(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """config.mesh.shape over every device, or (one process, a -1 axis) over as many as the training
  microbatch splits over evenly, with a line saying so: a CPU has one device per core, and 6 cores with
  microbatches of 16 train on 4 rather than stopping."""
  devices = jax.devices()
  t = config.train
  rows = t.batch_size // num_microbatches(t)  # One microbatch's examples: what each step splits over devices.
  field = "microbatch_size" if num_microbatches(t) > 1 else "batch_size"
  count = len(devices)
  if jax.process_count() == 1:
    count = sharding_lib.devices_for_batch(config.mesh.shape, rows, len(devices))
  if count < len(devices):
    print(f"Using {count} of the {len(devices)} devices: config.train.{field} = {rows} examples split evenly over "
          f"{count}; a multiple of {len(devices)} would use them all.", flush=True)
  return sharding_lib.make_mesh(config.mesh.shape, devices[:count])


class Run:
  """A validated config's workdir, checkpoints and training-state layout (see the module docstring)."""

  checkpoint_dirname = "checkpoints"  # Under the workdir.
  what, trained_by = "model", "trained or converted run"  # For errors about a workdir.
  samples_while_training = True  # Training writes sample grids every config.train.sample_every steps.
  train_mode = "train"  # The --mode that trains one.
  config: ml_collections.ConfigDict
  workdir: Optional[str]
  mesh: jax.sharding.Mesh

  def train_step_fn(self) -> Callable:
    """The jitted, sharded update (state donated): (state, batch, train_rng) → (state, metrics)."""
    raise NotImplementedError

  def batch_source(self) -> Callable[[int], dict]:
    """Batch `step` of the run as a pure function of (seed, step) (a data.BatchSource)."""
    raise NotImplementedError

  # The training layout is built on first use: sampling, evaluation and editing never need an optimizer.
  @functools.cached_property
  def optimizer(self) -> optax.GradientTransformation:
    return make_optimizer(self.config)

  @functools.cached_property
  def _program_key(self) -> Any:
    return programs.program_key(self.config, self.mesh)

  @functools.cached_property
  def _sharded_init(self) -> ShardedInit:
    """The subclass's model's initialiser over this mesh (kept in `programs` for every run of the same key)."""
    raise NotImplementedError

  @property
  def init_fn(self) -> Callable[[], TrainState]:
    """A fresh training state (random parameters, new optimizer), made directly in its shardings."""
    return self._sharded_init.init

  @property
  def state_shardings(self) -> Any:
    return self._sharded_init.shardings

  @functools.cached_property
  def abstract_state(self) -> TrainState:
    """The training state's shapes, dtypes and shardings (ShapeDtypeStructs; nothing allocated)."""
    return ckpt_lib.abstract_with_shardings(self._sharded_init.shapes, self.state_shardings)

  @functools.cached_property
  def abstract_params(self) -> Any:
    """The parameters' shapes, dtypes and shardings alone: what sampling restores (the subclass's model)."""
    raise NotImplementedError

  @classmethod
  def from_workdir(cls, workdir: str, mesh: Optional[jax.sharding.Mesh] = None) -> Any:
    """This class's Run of another workdir, built from the config saved with its latest checkpoint."""
    directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), cls.checkpoint_dirname)
    if not os.path.isdir(directory):
      raise UserError(f"{workdir} holds no {cls.what} (no {cls.checkpoint_dirname}/ in it); give the workdir of a "
                      f"{cls.trained_by}.")
    with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
      saved = checkpointer.saved_config()
    return cls(config_from_json(saved, default_config()), workdir, mesh=mesh)

  # --- The workdir and its checkpoints -----------------------------------------------------------------

  def open_workdir(self, create: bool) -> str:
    """The workdir's absolute path, created if `create` (training), else required to exist (sample, eval).

    A path that is a file, cannot be created or is not writable is a UserError that names it.
    """
    workdir = self.workdir
    if workdir is None:
      raise ValueError(f"This {type(self).__name__} was built without a workdir.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise UserError(f"--workdir {workdir} is a file, not a directory; pass a directory path.")
    if not create:
      if not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} does not exist: point it at a training run's directory.")
      return workdir
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise UserError(f"Cannot create --workdir {workdir}: {e.strerror}. Pass a writable directory.") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise UserError(f"--workdir {workdir} is not writable; pass a directory you can write to.")
    return workdir

  def checkpointer(self, read_only: bool = False) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(self.open_workdir(create=not read_only), self.checkpoint_dirname),
                                 keep=self.config.train.keep_checkpoints, read_only=read_only)

  def _check_same_model(self, checkpointer: ckpt_lib.Checkpointer) -> Callable[[dict], None]:
    """A check of a checkpoint's saved config against this one: a UserError naming the differing fields."""
    raise NotImplementedError

  def _state_targets(self) -> dict[str, Any]:
    a = self.abstract_state
    return {"params": a.params, "ema_params": a.ema_params, ckpt_lib.TRAINING_ITEM: {
        "step": a.step, "opt_state": a.opt_state, "nonfinite_streak": a.nonfinite_streak}}

  def _state_from_items(self, items: dict[str, Any], step: int) -> TrainState:
    """A TrainState from restored items; a checkpoint of parameters alone (a converted model) continues with
    them as parameters and EMA and a fresh optimizer, at its step."""
    if ckpt_lib.TRAINING_ITEM not in items:
      build = jax.jit(lambda p: init_state_from_params(self.optimizer, p), out_shardings=self.state_shardings)
      state = build(items["params"])
      return state.replace(step=state.step + step)
    training = items[ckpt_lib.TRAINING_ITEM]
    return TrainState(step=training["step"], params=items["params"], ema_params=items["ema_params"],
                      opt_state=training["opt_state"], nonfinite_streak=training["nonfinite_streak"])

  def restore_state(self, checkpointer: ckpt_lib.Checkpointer, step: Optional[int] = None) -> TrainState:
    """The training state of the checkpoint at `step` (default: the latest)."""
    step = checkpointer.latest_step() if step is None else step
    items, _ = checkpointer.restore(self._state_targets(), step, self._check_same_model(checkpointer))
    return self._state_from_items(items, step)

  def fresh_state(self) -> TrainState:
    """The state a run without checkpoints starts from: random parameters (an Experiment may start from
    another run's)."""
    return self.init_fn()

  def restore_or_init(self, checkpointer: ckpt_lib.Checkpointer) -> TrainState:
    """The latest readable checkpoint (older ones if the latest is damaged), or `fresh_state()` if none."""
    if checkpointer.latest_step() is None:
      return self.fresh_state()
    items, _, step = checkpointer.restore_latest_readable(self._state_targets(), self._check_same_model(checkpointer))
    return self._state_from_items(items, step)

  def _no_checkpoint(self, directory: str) -> UserError:
    mode = "" if self.train_mode == "train" else f" --mode={self.train_mode}"
    return UserError(f"No checkpoint in {directory}: train first with `python main.py --config=... "
                     f"--workdir={self.workdir}{mode}` (sampling and evaluation need one).")

  def require_checkpoint(self) -> None:
    """A UserError, before any work, when the workdir holds no checkpoint to sample from."""
    with self.checkpointer(read_only=True) as checkpointer:
      if checkpointer.latest_step() is None:
        raise self._no_checkpoint(checkpointer.directory)

  def load_params(self, use_ema: bool = True, step: Optional[int] = None) -> tuple[Any, int]:
    """(EMA or raw parameters, step) of the workdir's checkpoint `step` (default: the latest readable one); a
    UserError when there is none."""
    name = "ema_params" if use_ema else "params"
    with self.checkpointer(read_only=True) as checkpointer:
      if checkpointer.latest_step() is None:
        raise self._no_checkpoint(checkpointer.directory)
      if step is None:
        items, _, step = checkpointer.restore_latest_readable({name: self.abstract_params},
                                                              self._check_same_model(checkpointer))
      else:
        items, _ = checkpointer.restore({name: self.abstract_params}, step, self._check_same_model(checkpointer))
    return items[name], step

  def write_params(self, params: Any, step: int = 0) -> None:
    """Writes `params` as checkpoint `step` of this new workdir, parameters alone (sampling reads them as the
    EMA; training continues from them with a fresh optimizer). A workdir that already holds checkpoints, or
    that a trainer is using, is refused with a UserError, and nothing is written.

    The trainer's lock comes first: opening checkpoints read-write runs Orbax's clean-up of unfinished
    saves, which would delete a running trainer's save in flight.
    """
    with WorkdirLock(self.open_workdir(create=True)) if jax.process_index() == 0 else contextlib.nullcontext():
      with self.checkpointer() as checkpointer:
        if checkpointer.latest_step() is not None:
          raise UserError(f"--workdir {self.workdir} already holds checkpoints; give a new directory (nothing was "
                          f"written).")
        laid_out = jax.jit(lambda p: p, out_shardings=jax.tree_util.tree_map(lambda a: a.sharding,
                                                                             self.abstract_params))(params)
        checkpointer.save_params(step, laid_out, self.config)

  @property
  def train_rng(self) -> jax.Array:
    """The training stream's key; step k folds in k."""
    return stream_key(self.config.seed, "train")

