"""--mode=sample: the guidance sweep from the latest checkpoint, written as PNGs and samples.npz."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from glide_jax.config import guidance_scales
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling import images as images_lib
from glide_jax.sampling.cascade import sample_cascade_grid
from glide_jax.sampling.prompts import class_of_prompt, parse_prompts


def sample_and_save(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Samples the guidance sweep from workdir's latest checkpoint; returns the paths written.

  One grid per guidance scale (a column per prompt, a row per repeat), guidance_sweep.png (a row per
  prompt, a column per scale, labelled) and samples.npz, all in workdir/samples. An upsampler's workdir
  samples the cascade (see glide_jax.sampling.cascade); samples.npz then also holds the base samples.
  """
  exp = Experiment(config, workdir)
  workdir = exp.open_workdir(create=False)
  s = config.sample
  class_names = exp.class_names()
  prompts = parse_prompts(s, class_names)
  scales = guidance_scales(s)
  params, step = exp.load_params(s.use_ema)
  low_res = None
  if exp.model_config.super_res:  # The cascade: the base run's samples, enlarged.
    low_res, grid = sample_cascade_grid(exp, params, prompts, scales, s.num_per_prompt,
                                        stream_key(config.seed, "sample"))
  else:
    sampler = exp.configured_sampler()
    with batched.progress_bar(len(prompts) * len(scales) * s.num_per_prompt, "sample") as progress:
      grid = exp.sample_grid(sampler, params, prompts, scales, s.num_per_prompt, stream_key(config.seed, "sample"),
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
    print(f"Wrote {len(scales)} grids, {paths['figure']} and {paths['npz']} (checkpoint step {step}, "
          f"{'EMA' if s.use_ema else 'raw'} parameters).", flush=True)
  return paths
