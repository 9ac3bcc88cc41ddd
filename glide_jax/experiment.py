"""The Experiment: everything a config (and a workdir) determines, built once and shared by every mode.

Training, `--mode=sample`, `--mode=eval`, the benchmark and the notebook all start from
`Experiment(config, workdir)`: it validates the config, then holds the tokenizer, the model, the diffusion
process, the device mesh and the training state's layout on it, and it opens the workdir and its
checkpoints. The modes add only what is theirs (the loop, the sweep, the scores).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
import optax

from glide_jax import data as data_lib
from glide_jax import saved_config
from glide_jax import sharding as sharding_lib
from glide_jax.config import base_run_config, default_config, num_microbatches, validate_config
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.errors import UserError
from glide_jax.model import ModelConfig, Text2ImUNet, get_tokenizer, init_params
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling.guided import GuidedSampler, SamplerSpec
from glide_jax.train import checkpoint as ckpt_lib
from glide_jax.train import programs
from glide_jax.train.init_from import new_input_channels, transfer_params
from glide_jax.train.step import (
  TrainState,
  init_state_from_params,
  make_optimizer,
  make_sharded_init,
  make_sharded_train_step,
)
from glide_jax.train.workdir_lock import WorkdirLock


def _mesh_the_batch_fits(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
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


# What a guide network (autoguidance) shares with the model it guides: the tokens, the images and the timesteps.
GUIDE_MUST_MATCH = ("model.tokenizer", "model.text_ctx", "data.image_size", "data.channels", "model.inpaint",
                    "model.low_res_size", "diffusion.noise_schedule", "diffusion.num_timesteps")


class Experiment:
  """A validated config made concrete: tokenizer, model, diffusion, mesh, state layout and workdir."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None,
               mesh: Optional[jax.sharding.Mesh] = None):
    validate_config(config)
    self.config = config
    self.workdir = os.path.abspath(os.path.expanduser(workdir)) if workdir else None
    self.tokenizer = get_tokenizer(config.model.tokenizer)
    self.model_config = ModelConfig.from_config(config, self.tokenizer.vocab_size)
    self.model = Text2ImUNet(self.model_config)
    self.diffusion = GaussianDiffusion.from_schedule(config.diffusion.noise_schedule, config.diffusion.num_timesteps)
    self.mesh = mesh if mesh is not None else _mesh_the_batch_fits(config)

  # The training layout is built on first use: sampling, evaluation and editing never need an optimizer.
  @functools.cached_property
  def optimizer(self) -> optax.GradientTransformation:
    return make_optimizer(self.config)

  @functools.cached_property
  def _program_key(self) -> Any:
    return programs.program_key(self.config, self.mesh)

  @functools.cached_property
  def _sharded_init(self) -> tuple[Callable[[], TrainState], Any]:
    return programs.kept("init", self._program_key, lambda: make_sharded_init(
        self.mesh, self.model, self.optimizer, stream_key(self.config.seed, "init")))

  @property
  def init_fn(self) -> Callable[[], TrainState]:
    """A fresh training state (random parameters, new optimizer), made directly in its shardings."""
    return self._sharded_init[0]

  @property
  def state_shardings(self) -> Any:
    return self._sharded_init[1]

  @functools.cached_property
  def abstract_state(self) -> TrainState:
    """The training state's shapes, dtypes and shardings (ShapeDtypeStructs; nothing allocated)."""
    return ckpt_lib.abstract_with_shardings(jax.eval_shape(self.init_fn), self.state_shardings)

  @functools.cached_property
  def abstract_params(self) -> Any:
    """The parameters' shapes, dtypes and shardings alone: what sampling restores."""
    shapes = jax.eval_shape(functools.partial(init_params, self.model), stream_key(self.config.seed, "init"))
    return ckpt_lib.abstract_with_shardings(shapes, sharding_lib.state_shardings(self.mesh, shapes))

  @classmethod
  def from_workdir(cls, workdir: str, mesh: Optional[jax.sharding.Mesh] = None) -> "Experiment":
    """The Experiment of another run, built from the config saved with its latest checkpoint."""
    directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
    if not os.path.isdir(directory):
      raise UserError(f"{workdir} holds no model (no checkpoints/ in it); give the workdir of a trained or "
                      f"converted run.")
    with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
      saved = checkpointer.saved_config()
    return cls(saved_config.config_from_json(saved, default_config()), workdir, mesh=mesh)

  def require_not_upsampler(self, mode: str) -> None:
    """A UserError for modes that generate from prompts alone, when this model is an upsampler."""
    if self.model_config.super_res:
      raise UserError(f"{mode} needs a model that generates from prompts; this config is an upsampler "
                      f"(model.low_res_size={self.model_config.low_res_size}). Use its base model's workdir and "
                      f"config, or --mode=sample here for the cascade.")

  # --- The workdir and its checkpoints -----------------------------------------------------------------

  def open_workdir(self, create: bool) -> str:
    """The workdir's absolute path, created if `create` (training), else required to exist (sample, eval).

    A path that is a file, cannot be created or is not writable is a UserError that names it.
    """
    workdir = self.workdir
    if workdir is None:
      raise ValueError("This Experiment was built without a workdir.")
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
    return ckpt_lib.Checkpointer(os.path.join(self.open_workdir(create=not read_only), "checkpoints"),
                                 keep=self.config.train.keep_checkpoints, read_only=read_only)

  def _check_same_model(self, checkpointer: ckpt_lib.Checkpointer) -> Callable[[dict], None]:
    return lambda saved: saved_config.check_same_model(saved, self.config, checkpointer.directory)

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

  def restore_or_init(self, checkpointer: ckpt_lib.Checkpointer) -> TrainState:
    """The latest readable checkpoint (older ones if the latest is damaged), or a fresh state if none:
    random, or the parameters of the run config.train.init_from names."""
    if checkpointer.latest_step() is None:
      return self.init_from(self.config.train.init_from) if self.config.train.init_from else self.init_fn()
    items, _, step = checkpointer.restore_latest_readable(self._state_targets(), self._check_same_model(checkpointer))
    return self._state_from_items(items, step)

  def init_from(self, base_workdir: str) -> TrainState:
    """A fresh state (step 0, new optimizer) whose parameters and EMA are the EMA parameters of the latest
    checkpoint in `base_workdir`: a run of the same model, except that this one may be an inpainting model
    (its extra input channels start at zero)."""
    base_config = base_run_config(self.config)
    base = Experiment(base_config, base_workdir, mesh=self.mesh)
    if not os.path.isdir(os.path.join(base.workdir, "checkpoints")):
      raise UserError(f"config.train.init_from = {base_workdir!r} holds no training run (no checkpoints/ in "
                      f"{base.workdir}); give the workdir of a finished base run.")

    def check(saved: dict) -> None:
      diffs = saved_config.model_config_differences(saved, base_config)
      if diffs:
        raise UserError(f"config.train.init_from: the run in {base.workdir} has another model than this one "
                        f"(apart from model.inpaint): {'; '.join(diffs)}. Use the base run's model settings.")

    with base.checkpointer(read_only=True) as checkpointer:
      if checkpointer.latest_step() is None:
        raise UserError(f"config.train.init_from = {base_workdir!r} has no checkpoint yet; train the base run first.")
      items, _, base_step = checkpointer.restore_latest_readable({"ema_params": base.abstract_params}, check)
    build = jax.jit(lambda p: init_state_from_params(self.optimizer, transfer_params(p, self.abstract_state.params)),
                    out_shardings=self.state_shardings)
    state = build(items["ema_params"])
    if jax.process_index() == 0:
      added = new_input_channels(items["ema_params"], self.abstract_state.params)
      print(f"Starting from the EMA parameters of {base.workdir} (step {base_step})"
            + (f"; the {added} new input channels start at zero." if added else "."), flush=True)
    return state

  def _no_checkpoint(self, directory: str) -> UserError:
    return UserError(f"No checkpoint in {directory}: train first with `python main.py --config=... "
                     f"--workdir={self.workdir}` (sampling and evaluation need one).")

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

  # --- Training ------------------------------------------------------------------------------------------

  def train_step_fn(self):
    """The jitted, sharded update (state donated): (state, batch, train_rng) → (state, metrics); one per model,
    recipe and mesh in this process (`glide_jax.train.programs`)."""
    sharding_lib.check_batch_divisible(self.config.train.batch_size, self.mesh,
                                       microbatches=num_microbatches(self.config.train))
    return programs.kept("train_step", self._program_key, lambda: make_sharded_train_step(
        self.mesh, self.state_shardings, model=self.model, diffusion=self.diffusion, optimizer=self.optimizer,
        config=self.config, pad_id=self.tokenizer.pad_id))

  @property
  def train_rng(self) -> jax.Array:
    """The training stream's key; step k folds in k."""
    return stream_key(self.config.seed, "train")

  def batch_source(self) -> data_lib.BatchSource:
    c = self.config
    return data_lib.BatchSource(data_lib.load_dataset(c.data), self.tokenizer, c.model.text_ctx,
                                c.data.prompt_templates, c.train.batch_size, c.seed, jax.process_index(),
                                jax.process_count())

  # --- Sampling ------------------------------------------------------------------------------------------

  def class_names(self) -> tuple[str, ...]:
    """The dataset's class words ("zero" … "nine" for MNIST), from its metadata alone."""
    return data_lib.class_names_of(self.config.data)

  @property
  def sampler_spec(self) -> SamplerSpec:
    """The sampler config.sample describes: sampler, respacing, ddim_eta, guidance and its interval."""
    return SamplerSpec.from_config(self.config.sample)

  def sampler(self, params: Any = None, spec: Optional[SamplerSpec] = None) -> GuidedSampler:
    """The compiled sampler of `spec` (default: `sampler_spec`) over this model and mesh, bound to `params`
    when given (and to `guide_params()` for autoguidance; else bind them with `.bind`); one per model, spec,
    guide network and mesh in this process."""
    spec = spec or self.sampler_spec
    guide = self.guide_experiment() if spec.guidance == "autoguidance" else None
    guide_model = None if guide is None or guide.model_config == self.model_config else guide.model
    sampler = programs.kept(
        "sampler", (self._program_key, spec, guide_model and guide_model.config), lambda: GuidedSampler(
            model=self.model, base_diffusion=self.diffusion, spec=spec, pad_id=self.tokenizer.pad_id, mesh=self.mesh,
            guide_model=guide_model))
    if params is None:
      return sampler
    return sampler.bind(params) if guide is None else sampler.bind(params, guide=self.guide_params(guide))

  def guide_experiment(self) -> "Experiment":
    """The run autoguidance guides with: sample.guide_workdir's (its own saved config: it may be a smaller
    model of the same images, text and diffusion), else this one. Another tokenizer, text context, image shape
    or diffusion is refused with a UserError naming the differences."""
    s = self.config.sample
    if not (s.guide_workdir or self.workdir):
      raise UserError("Autoguidance by an earlier checkpoint needs the run's workdir: give this Experiment one, or "
                      "config.sample.guide_workdir.")
    if not s.guide_workdir:
      return self
    guide = Experiment.from_workdir(s.guide_workdir, mesh=self.mesh)
    differing = [f"{field} = {guide.config[a][b]!r} there, {self.config[a][b]!r} here" for field in GUIDE_MUST_MATCH
                 for a, b in [field.split(".")] if guide.config[a][b] != self.config[a][b]]
    if differing:
      raise UserError(f"config.sample.guide_workdir = {s.guide_workdir!r} cannot guide this model: "
                      + "; ".join(differing) + ". A guide must read the same prompts, images and timesteps; "
                      "train it with the same values (a smaller model_channels is fine).")
    return guide

  def guide_params(self, guide: Optional["Experiment"] = None) -> Any:
    """The parameters autoguidance guides with (EMA or not, as config.sample.use_ema): checkpoint
    sample.guide_step of `guide` (default: `guide_experiment()`), or its latest."""
    s = self.config.sample
    guide = guide or self.guide_experiment()
    if s.guide_step:
      with guide.checkpointer(read_only=True) as checkpointer:
        steps = checkpointer.all_steps()
      if s.guide_step not in steps:
        raise UserError(f"config.sample.guide_step = {s.guide_step}: {guide.workdir} holds no checkpoint at that step "
                        f"(it keeps {steps}). Give one of those, or keep more while training "
                        f"(--config.train.keep_checkpoints).")
    return guide.load_params(s.use_ema, step=s.guide_step or None)[0]

  def sample_grid(self, sampler: GuidedSampler, prompts: Sequence[str], scales: Sequence[float],
                  num_per_prompt: int, rng: jax.Array, progress: Any = None) -> np.ndarray:
    """uint8 samples [P, S, K, H, W, C] from a bound sampler for every prompt, guidance scale and repeat,
    config.sample.batch_size rows per sampler call."""
    tokens, mask = self.tokenizer.tokenize_batch(list(prompts), self.config.model.text_ctx)
    return batched.sample_grid(sampler, tokens, mask, np.asarray(scales, np.float32), num_per_prompt, rng,
                               self.config.sample.batch_size, self.mesh.size, progress=progress)
