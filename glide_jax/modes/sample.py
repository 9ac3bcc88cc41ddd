"""--mode=sample: the guidance sweep from the latest checkpoint, written as PNGs and samples.npz.

From an upsampler's workdir, the cascade (glide-text2im's text2im notebook): a base model samples small
images with classifier-free guidance, then the upsampler enlarges each one, conditioned on the same prompt.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax.config import guidance_scales
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling import images as images_lib
from glide_jax.sampling.prompts import class_of_prompt, parse_prompts


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Samples the guidance sweep from workdir's latest checkpoint; returns the paths written.

  One grid per guidance scale (a column per prompt, a row per repeat), guidance_sweep.png (a row per
  prompt, a column per scale, labelled) and samples.npz, all in workdir/samples. An upsampler's workdir
  samples the cascade (`sample_cascade_grid` below); samples.npz then also holds the base samples.
  """
  exp = Experiment(config, workdir)
  workdir = exp.open_workdir(create=False)
  s = config.sample
  class_names = exp.class_names()
  prompts = parse_prompts(s, class_names)
  scales = guidance_scales(s)
  low_res = None
  if exp.model_config.super_res:  # The cascade: the base run's samples, enlarged.
    low_res, grid, step = sample_cascade_grid(exp, prompts, scales, s.num_per_prompt,
                                              stream_key(config.seed, "sample"))
  else:
    params, step = exp.load_params(s.use_ema)
    with batched.progress_bar(len(prompts) * len(scales) * s.num_per_prompt, "sample") as progress:
      grid = exp.sample_grid(exp.sampler(params), prompts, scales, s.num_per_prompt, stream_key(config.seed, "sample"),
                             progress=progress)
  paths = {}
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    p, n_scales, k = grid.shape[:3]
    for j, scale in enumerate(scales):
      path = os.path.join(out_dir, f"guidance_{scale:g}.png")
      columns = grid[:, j].transpose(1, 0, 2, 3, 4).reshape(-1, *grid.shape[3:])
      images_lib.save_png(path, images_lib.make_grid(columns, rows=k, cols=p))
      paths[f"grid_{scale:g}"] = path
    paths["figure"] = os.path.join(out_dir, "guidance_sweep.png")
    images_lib.save_png(paths["figure"], images_lib.sweep_figure(grid, prompts, scales))
    paths["npz"] = os.path.join(out_dir, "samples.npz")
    np.savez_compressed(
        paths["npz"], images=grid.reshape(-1, *grid.shape[3:]),
        prompts=np.repeat(np.array(prompts), n_scales * k),
        digits=np.repeat(np.array([class_of_prompt(q, class_names) for q in prompts]), n_scales * k),
        guidance=np.tile(np.repeat(np.array(scales, np.float32), k), p), step=step,
        **({} if low_res is None else {"low_res": low_res.reshape(-1, *low_res.shape[3:])}))
    guide = ""
    if s.guidance == "autoguidance" and not exp.model_config.super_res:
      which = f"checkpoint {s.guide_step}" if s.guide_step else "the latest checkpoint"
      guide = f", guided by {which} of {s.guide_workdir or 'this run'}"
    if s.guidance == "clip" and not exp.model_config.super_res:
      guide = f", CLIP-guided by {s.clip_workdir}"
    print(f"Wrote {len(scales)} grids, {paths['figure']} and {paths['npz']} (checkpoint step {step}, "
          f"{'EMA' if s.use_ema else 'raw'} parameters{guide}).", flush=True)
  return paths


def base_experiment(upsampler: Experiment) -> Experiment:
  """The run config.sample.base_workdir names, checked to produce what `upsampler` enlarges. It samples with its
  own saved settings, except that CLIP guidance asked of the upsampler guides the base stage (glide-text2im's
  clip_guided notebook; the upsampler itself is unguided)."""
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
  if s.guidance == "clip":
    base.config.sample.guidance, base.config.sample.clip_workdir = "clip", s.clip_workdir
  return base


def upsample(upsampler: Experiment, params: Any, low_res: np.ndarray, prompts: Sequence[str],
             rng: jax.Array, images: Optional[np.ndarray] = None, known: Optional[np.ndarray] = None) -> np.ndarray:
  """uint8 [N, H, W, C]: each uint8 image of `low_res` [N, h, w, C] enlarged for its prompt, as
  glide-text2im does: from the 8-bit images, conditional (no guidance), x_T at config.sample.upsample_temp,
  with the upsampler's own sampler. Editing (inpaint.ipynb's second stage): uint8 `images` [N, H, W, C] and
  `known` [N, H, W, 1] (1 = keep) at the upsampler's size, kept exactly where known."""
  s = upsampler.config.sample
  sampler = upsampler.sampler(params, upsampler.sampler_spec.replace(temperature=s.upsample_temp, guidance="none"))
  tokens, mask = upsampler.tokenizer.tokenize_batch(list(prompts), upsampler.config.model.text_ctx)
  edit = {} if images is None else {"images": data_lib.to_model_range(images), "known": known}
  flat = batched.sample_in_batches(sampler, tokens, mask, np.ones((len(prompts),), np.float32), rng,
                                   s.batch_size, upsampler.mesh.size, low_res=data_lib.to_model_range(low_res), **edit)
  return images_lib.to_uint8(flat)


def base_samples(base: Experiment, prompts: Sequence[str], scales: Sequence[float], num_per_prompt: int,
                 rng: jax.Array) -> np.ndarray:
  """The base stage: uint8 [P, S, K, h, w, C]. Its parameters are freed on return, before the upsampler's load."""
  params, _ = base.load_params(base.config.sample.use_ema)
  return base.sample_grid(base.sampler(params), prompts, scales, num_per_prompt, rng)


def sample_cascade_grid(upsampler: Experiment, prompts: Sequence[str], scales: Sequence[float],
                        num_per_prompt: int, rng: jax.Array) -> tuple[np.ndarray, np.ndarray, int]:
  """(base samples [P, S, K, h, w, C], their enlargements [P, S, K, H, W, C], uint8, for every prompt,
  guidance scale of the base stage and repeat; the upsampler's checkpoint step). One model's parameters are
  in memory at a time."""
  base = base_experiment(upsampler)
  upsampler.require_checkpoint()  # Before the base stage's work.
  low = base_samples(base, prompts, scales, num_per_prompt, jax.random.fold_in(rng, 0))
  params, step = upsampler.load_params(upsampler.config.sample.use_ema)
  p, n_scales, k = low.shape[:3]
  rows = np.repeat(np.arange(p), n_scales * k)
  high = upsample(upsampler, params, low.reshape(-1, *low.shape[3:]), [prompts[i] for i in rows],
                  jax.random.fold_in(rng, 1))
  return low, high.reshape(p, n_scales, k, *high.shape[1:]), step
