"""A noised CLIP's run: the `Run` of `--mode=train_clip` and of the CLIP that CLIP guidance reads.

A CLIP run is a workdir like a diffusion run's (Orbax checkpoints with their config, TensorBoard metrics, a
lock while training), its checkpoints in `clip_checkpoints/` so that neither kind is mistaken for the other.
Its config is a whole glide-jax config: `clip` gives the sizes, `data` the images and prompts, `diffusion`
the noise the image encoder learns to read, and `train` the optimiser, batch and steps (as for the diffusion
model; the UNet's own fields are unused).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax
import ml_collections

from glide_jax import data as data_lib
from glide_jax import saved_config
from glide_jax import sharding as sharding_lib
from glide_jax.clip.model import ClipConfig, init_clip_params
from glide_jax.clip.tokenizer import VOCAB_SIZE, get_clip_tokenizer
from glide_jax.clip.training import ClipBatchSource, ClipPromptTokens, clip_train_step
from glide_jax.config import validate_config
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.errors import UserError
from glide_jax.rng import stream_key
from glide_jax.run import Run, mesh_the_batch_fits
from glide_jax.train import checkpoint as ckpt_lib
from glide_jax.train import programs
from glide_jax.train.step import ShardedInit, TrainState, init_state_from_params, shard_init

# The fields that make a CLIP's parameters mean what they mean: its sizes, the images and the noise it reads.
CLIP_MODEL_FIELDS = ("clip", "data.image_size", "data.channels", "diffusion")


# config.clip's fields: ClipConfig's of the same names (n_vocab 0 there means CLIP's BPE vocabulary).
CLIP_SECTION_FIELDS = ("patch_size", "image_heads", "image_head_width", "image_blocks", "text_heads",
                       "text_head_width", "text_blocks", "n_vocab", "max_text_len", "embed_dim", "logit_scale")


def clip_config_of(config: ml_collections.ConfigDict) -> ClipConfig:
  """The ClipConfig of a (validated) config: config.clip's sizes, data's images, diffusion's timesteps."""
  sizes = {field: config.clip[field] for field in CLIP_SECTION_FIELDS}
  sizes.update(n_vocab=sizes["n_vocab"] or VOCAB_SIZE, logit_scale=float(sizes["logit_scale"]))
  return ClipConfig(image_size=config.data.image_size, image_channels=config.data.channels,
                    n_timesteps=config.diffusion.num_timesteps, beta_schedule=config.diffusion.noise_schedule, **sizes)


class ClipExperiment(Run):
  """A validated config's noised CLIP: its ClipConfig, tokenizer, diffusion, mesh, state layout and workdir."""

  checkpoint_dirname = "clip_checkpoints"
  what, trained_by = "noised CLIP", "--mode=train_clip run (or a --mode=convert --model=clip one)"
  samples_while_training = False
  train_mode = "train_clip"

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None,
               mesh: Optional[jax.sharding.Mesh] = None):
    validate_config(config)
    self.config = config
    self.workdir = os.path.abspath(os.path.expanduser(workdir)) if workdir else None
    self.tokenizer = get_clip_tokenizer()
    self.clip_config = clip_config_of(config)
    self.diffusion = GaussianDiffusion.from_schedule(config.diffusion.noise_schedule, config.diffusion.num_timesteps,
                                                     config.diffusion.snr_scale)
    self.mesh = mesh if mesh is not None else mesh_the_batch_fits(config)

  def check_trainable(self) -> None:
    """What a CLIP run's training cannot do with this config, as a ConfigError-like UserError, before any work."""
    t = self.config.train
    if t.microbatch_size:
      raise UserError(f"config.train.microbatch_size = {t.microbatch_size}: a CLIP's contrastive loss compares every "
                      f"image with every prompt of the batch, so it cannot be split into microbatches; set it to 0.")
    if t.init_from:
      raise UserError("config.train.init_from starts a diffusion model from another run; a CLIP run starts from "
                      "random weights: leave it ''.")

  @functools.cached_property
  def _sharded_init(self) -> ShardedInit:
    rng = stream_key(self.config.seed, "init")

    def init() -> TrainState:
      return init_state_from_params(self.optimizer, init_clip_params(self.clip_config, rng))

    return programs.kept("clip_init", self._program_key, lambda: shard_init(self.mesh, init))

  @functools.cached_property
  def abstract_params(self) -> Any:
    shapes = jax.eval_shape(functools.partial(init_clip_params, self.clip_config), stream_key(self.config.seed, "init"))
    return ckpt_lib.abstract_with_shardings(shapes, sharding_lib.state_shardings(self.mesh, shapes))

  def _check_same_model(self, checkpointer: ckpt_lib.Checkpointer) -> Callable[[dict], None]:
    def check(saved: dict) -> None:
      diffs = saved_config.differences(saved, self.config, CLIP_MODEL_FIELDS)
      if diffs:
        raise UserError(f"The CLIP checkpoint in {checkpointer.directory} has another model config: "
                        + "; ".join(diffs) + ". Use that run's config and overrides, or a new --workdir.")
    return check

  def train_step_fn(self):
    """The jitted, sharded CLIP update (state donated): (state, batch, train_rng) → (state, metrics)."""
    sharding_lib.check_batch_divisible(self.config.train.batch_size, self.mesh)
    return programs.kept("clip_train_step", self._program_key, lambda: jax.jit(
        functools.partial(clip_train_step, clip_config=self.clip_config, diffusion=self.diffusion,
                          optimizer=self.optimizer, config=self.config),
        in_shardings=(self.state_shardings, sharding_lib.batch_sharding(self.mesh), sharding_lib.replicated(self.mesh)),
        out_shardings=(self.state_shardings, sharding_lib.replicated(self.mesh)), donate_argnums=(0,)))

  def batch_source(self) -> ClipBatchSource:
    c = self.config
    return ClipBatchSource(data_lib.load_dataset(c.data), ClipPromptTokens(self.tokenizer),
                           self.clip_config.max_text_len, c.data.prompt_templates, c.train.batch_size, c.seed,
                           jax.process_index(), jax.process_count())

  def tokenize(self, prompts: list[str]) -> tuple[Any, Any]:
    """CLIP tokens [N, max_text_len] and lengths [N] of prompts (longer ones truncated, with a warning)."""
    return self.tokenizer.encode_prompts(prompts, self.clip_config.max_text_len)
