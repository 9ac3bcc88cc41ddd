"""The Experiment: everything a config (and a workdir) determines, built once and shared by every mode.

Training, `--mode=sample`, `--mode=eval`, the benchmark and the notebook all start from
`Experiment(config, workdir)`: it validates the config, then holds the tokenizer, the model, the diffusion
process, the device mesh and the training state's layout on it, and it opens the workdir and its
checkpoints (the last two as every `glide_jax.run.Run`). The modes add only what is theirs (the loop, the
sweep, the scores).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax import saved_config
from glide_jax import sharding as sharding_lib
from glide_jax.clip.experiment import ClipExperiment
from glide_jax.config import base_run_config, num_microbatches, validate_config
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.diffusion.schedules import canonical_schedule_name
from glide_jax.editing.composites import EditComposer
from glide_jax.errors import UserError
from glide_jax.model import ModelConfig, Text2ImUNet, get_tokenizer, init_params
from glide_jax.rng import stream_key
from glide_jax.run import Run, mesh_the_batch_fits
from glide_jax.sampling import batched
from glide_jax.sampling.guidance import pack_clip_rows
from glide_jax.sampling.guided import GuidedSampler, SamplerSpec
from glide_jax.train import checkpoint as ckpt_lib
from glide_jax.train import programs
from glide_jax.train.init_from import new_input_channels, transfer_params
from glide_jax.train.step import (
  ShardedInit,
  TrainState,
  init_state_from_params,
  make_sharded_init,
  make_sharded_train_step,
)

# What a guide network (autoguidance) shares with the model it guides: the tokens, the images and the timesteps.
GUIDE_MUST_MATCH = ("model.tokenizer", "model.text_ctx", "data.image_size", "data.channels", "model.inpaint",
                    "model.low_res_size", "diffusion.noise_schedule", "diffusion.num_timesteps",
                    "diffusion.snr_scale")


class Experiment(Run):
  """A validated config made concrete: tokenizer, model, diffusion, mesh, state layout and workdir (the last
  two as every Run's)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None,
               mesh: Optional[jax.sharding.Mesh] = None):
    validate_config(config)
    self.config = config
    self.workdir = os.path.abspath(os.path.expanduser(workdir)) if workdir else None
    self.tokenizer = get_tokenizer(config.model.tokenizer)
    self.model_config = ModelConfig.from_config(config, self.tokenizer.vocab_size)
    self.model = Text2ImUNet(self.model_config)
    self.diffusion = GaussianDiffusion.from_schedule(config.diffusion.noise_schedule, config.diffusion.num_timesteps,
                                                     config.diffusion.snr_scale)
    self.mesh = mesh if mesh is not None else mesh_the_batch_fits(config)

  @functools.cached_property
  def _sharded_init(self) -> ShardedInit:
    return programs.kept("init", self._program_key, lambda: make_sharded_init(
        self.mesh, self.model, self.optimizer, stream_key(self.config.seed, "init")))

  @functools.cached_property
  def abstract_params(self) -> Any:
    """The parameters' shapes, dtypes and shardings alone: what sampling restores."""
    shapes = jax.eval_shape(functools.partial(init_params, self.model), stream_key(self.config.seed, "init"))
    return ckpt_lib.abstract_with_shardings(shapes, sharding_lib.state_shardings(self.mesh, shapes))

  def require_not_upsampler(self, mode: str) -> None:
    """A UserError for modes that generate from prompts alone, when this model is an upsampler."""
    if self.model_config.super_res:
      raise UserError(f"{mode} needs a model that generates from prompts; this config is an upsampler "
                      f"(model.low_res_size={self.model_config.low_res_size}). Use its base model's workdir and "
                      f"config, or --mode=sample here for the cascade.")

  def _check_same_model(self, checkpointer: ckpt_lib.Checkpointer) -> Callable[[dict], None]:
    return lambda saved: saved_config.check_same_model(saved, self.config, checkpointer.directory)

  def fresh_state(self) -> TrainState:
    """Random parameters, or those of the run config.train.init_from names."""
    return self.init_from(self.config.train.init_from) if self.config.train.init_from else self.init_fn()

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

  # --- Training ------------------------------------------------------------------------------------------

  def train_step_fn(self):
    """The jitted, sharded update (state donated): (state, batch, train_rng) → (state, metrics); one per model,
    recipe and mesh in this process (`glide_jax.train.programs`)."""
    sharding_lib.check_batch_divisible(self.config.train.batch_size, self.mesh,
                                       microbatches=num_microbatches(self.config.train))
    return programs.kept("train_step", self._program_key, lambda: make_sharded_train_step(
        self.mesh, self.state_shardings, model=self.model, diffusion=self.diffusion, optimizer=self.optimizer,
        config=self.config, pad_id=self.tokenizer.pad_id))

  def batch_source(self) -> data_lib.BatchSource:
    c = self.config
    dataset, composer = data_lib.load_dataset(c.data), None
    if c.train.edit_composites:
      data_lib.require_classes(c.data, f"config.train.edit_composites = {c.train.edit_composites}")
      composer = EditComposer(dataset.images, dataset.labels, len(dataset.class_names), c.train.edit_composites,
                              c.seed)
    return data_lib.BatchSource(dataset, self.tokenizer, c.model.text_ctx, c.data.prompt_templates,
                                c.train.batch_size, c.seed, jax.process_index(), jax.process_count(), composer)

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
    if spec.guidance == "clip" and not self.config.sample.clip_workdir:
      raise UserError("CLIP guidance needs a noised CLIP: --config.sample.clip_workdir=DIR, a run of "
                      "--mode=train_clip (or --mode=convert --model=clip).")
    clip = self.clip_experiment if spec.guidance == "clip" else None
    clip_config = None if clip is None else clip.clip_config
    sampler = programs.kept(
        "sampler", (self._program_key, spec, guide_model and guide_model.config, clip_config), lambda: GuidedSampler(
            model=self.model, base_diffusion=self.diffusion, spec=spec, pad_id=self.tokenizer.pad_id, mesh=self.mesh,
            guide_model=guide_model, clip_config=clip_config))
    if params is None:
      return sampler
    if guide is not None:
      return sampler.bind(params, guide=self.guide_params(guide))
    if clip is not None:
      return sampler.bind(params, clip=clip.load_params(self.config.sample.use_ema)[0])
    return sampler.bind(params)

  @functools.cached_property
  def clip_experiment(self) -> ClipExperiment:
    """The noised CLIP that CLIP guidance reads (config.sample.clip_workdir), built from its saved config and
    checked to read this model's images and timesteps (a UserError naming the differences otherwise)."""
    s = self.config.sample
    clip = ClipExperiment.from_workdir(s.clip_workdir, mesh=self.mesh)
    k, c, d = clip.clip_config, self.model_config, self.config.diffusion
    differing = [f"{what} {there!r} there, {here!r} here" for what, there, here in (
        ("image size", k.image_size, c.image_size), ("channels", k.image_channels, c.in_channels),
        ("diffusion timesteps", k.n_timesteps, d.num_timesteps),
        ("noise schedule", canonical_schedule_name(clip.config.diffusion.noise_schedule),
         canonical_schedule_name(d.noise_schedule)),
        ("SNR scale", clip.config.diffusion.snr_scale, d.snr_scale)) if there != here]
    if differing:
      raise UserError(f"config.sample.clip_workdir = {s.clip_workdir!r} holds a CLIP of other images or noise than "
                      f"this model's: {'; '.join(differing)}. Train one with this config's data and diffusion "
                      f"(--mode=train_clip).")
    return clip

  def prompt_rows(self, prompts: Sequence[str], sampler: GuidedSampler) -> tuple[np.ndarray, np.ndarray]:
    """`sampler`'s rows for `prompts`: tokens and mask [N, text_ctx], and for a CLIP-guided sampler their CLIP
    tokens packed beside them (guidance.pack_clip_rows)."""
    tokens, mask = self.tokenizer.tokenize_batch(list(prompts), self.config.model.text_ctx)
    if sampler.clip_config is None:
      return tokens, mask
    return pack_clip_rows(tokens, mask, *self.clip_experiment.tokenize(list(prompts)))

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
    tokens, mask = self.prompt_rows(prompts, sampler)
    return batched.sample_grid(sampler, tokens, mask, np.asarray(scales, np.float32), num_per_prompt, rng,
                               self.config.sample.batch_size, self.mesh.size, progress=progress)
