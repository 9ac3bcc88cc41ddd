"""Cascade sampling (glide-text2im's text2im notebook): a base model samples small images with
classifier-free guidance, then an upsampler enlarges each one, conditioned on the same prompt."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from glide_jax import data as data_lib
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.sampling import batched
from glide_jax.sampling import images as images_lib


def base_experiment(upsampler: Experiment) -> Experiment:
  """The run config.sample.base_workdir names, checked to produce what `upsampler` enlarges."""
  s = upsampler.config.sample
  if not s.base_workdir:
    raise UserError("This workdir holds an upsampler: --mode=sample enlarges a base model's samples. Name the "
                    "base model's workdir with --config.sample.base_workdir=DIR.")
  base = Experiment.from_workdir(s.base_workdir, mesh=upsampler.mesh)
  want, got = upsampler.model_config, base.model_config
  if (got.image_size, got.in_channels) != (want.low_res_size, want.in_channels) or got.super_res:
    raise UserError(f"config.sample.base_workdir {s.base_workdir} holds a {got.image_size} px, {got.in_channels}-"
                    f"channel {'upsampler' if got.super_res else 'model'}; this upsampler enlarges "
                    f"{want.low_res_size} px, {want.in_channels}-channel images from a base model.")
  return base


def upsample(upsampler: Experiment, params: Any, low_res: np.ndarray, prompts: Sequence[str],
             rng: jax.Array) -> np.ndarray:
  """uint8 [N, H, W, C]: each uint8 image of `low_res` [N, h, w, C] enlarged for its prompt, as
  glide-text2im does: from the 8-bit images, conditional (no guidance), x_T at config.sample.upsample_temp."""
  s = upsampler.config.sample
  sampler = upsampler.make_sampler(s.sampler, s.respacing, s.ddim_eta, temperature=s.upsample_temp, guided=False)
  tokens, mask = upsampler.tokenizer.tokenize_batch(list(prompts), upsampler.config.model.text_ctx)
  flat = batched.sample_in_batches(sampler, params, tokens, mask, np.ones((len(prompts),), np.float32), rng,
                                   s.batch_size, upsampler.mesh.size, low_res=data_lib.to_model_range(low_res))
  return images_lib.to_uint8(flat)


def sample_cascade_grid(upsampler: Experiment, params: Any, prompts: Sequence[str], scales: Sequence[float],
                        num_per_prompt: int, rng: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(base samples [P, S, K, h, w, C], their enlargements [P, S, K, H, W, C]), uint8, for every prompt,
  guidance scale of the base stage and repeat."""
  base = base_experiment(upsampler)
  bs = base.config.sample
  base_params, _ = base.load_params(bs.use_ema)
  base_sampler = base.configured_sampler()
  low = base.sample_grid(base_sampler, base_params, prompts, scales, num_per_prompt, jax.random.fold_in(rng, 0))
  p, n_scales, k = low.shape[:3]
  rows = np.repeat(np.arange(p), n_scales * k)
  high = upsample(upsampler, params, low.reshape(-1, *low.shape[3:]), [prompts[i] for i in rows],
                  jax.random.fold_in(rng, 1))
  return low, high.reshape(p, n_scales, k, *high.shape[1:])
