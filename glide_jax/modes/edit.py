"""--mode=edit: regenerate the masked part of images to match prompts, with the guided sampler.

An inpainting workdir (config.model.inpaint) edits as glide-text2im does; any other workdir edits by the
replacement method, so a base checkpoint can edit too (see diffusion/known_region.py).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax.config import guidance_scales
from glide_jax.editing.figure import edit_figure
from glide_jax.editing.inputs import edit_method, load_images, load_known_mask
from glide_jax.editing.masks import known_region_error
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling import images as images_lib
from glide_jax.sampling.prompts import split_prompts


def edit_grid(exp: Experiment, params, images_uint8: np.ndarray, known: np.ndarray, prompts: list[str],
              scales: list[float], rng: jax.Array) -> np.ndarray:
  """uint8 edits [N, P, S, H, W, C] of N images (known: [N, H, W, 1], 1 = keep) for every prompt and scale."""
  s = exp.config.sample
  sampler = exp.sampler(params)
  n, p, k = len(images_uint8), len(prompts), len(scales)
  rows = np.array([(i, j, m) for i in range(n) for j in range(p) for m in range(k)])
  tokens, mask = exp.tokenizer.tokenize_batch(list(prompts), exp.config.model.text_ctx)
  flat = batched.sample_in_batches(
      sampler, tokens[rows[:, 1]], mask[rows[:, 1]], np.asarray(scales, np.float32)[rows[:, 2]], rng,
      s.batch_size, exp.mesh.size, images=data_lib.to_model_range(images_uint8)[rows[:, 0]], known=known[rows[:, 0]])
  return images_lib.to_uint8(flat).reshape(n, p, k, *flat.shape[1:])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Edits config.edit.images under config.edit.mask for every prompt and guidance scale; writes
  edits/edit.png (original | masked | edits) and edits/edits.npz; returns their paths."""
  exp = Experiment(config, workdir)
  exp.require_not_upsampler("--mode=edit")
  workdir = exp.open_workdir(create=False)
  e = config.edit
  sources = load_images(e.images, config.data)
  known_one = load_known_mask(e.mask, config.data.image_size, sources.source_size)
  known = np.broadcast_to(known_one, (len(sources.images), *known_one.shape)).copy()
  prompts = split_prompts(e.prompts) if e.prompts.strip() else list(exp.class_names())
  if not prompts:
    raise UserError("This config has no dataset, so no class prompts: give --config.edit.prompts (comma-separated).")
  scales = guidance_scales(e)
  params, step = exp.load_params(config.sample.use_ema)
  edits = edit_grid(exp, params, sources.images, known, prompts, scales, stream_key(config.seed, "edit"))
  error = known_region_error(edits, sources.images, known)
  paths = {}
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "edits")
    os.makedirs(out_dir, exist_ok=True)
    paths["figure"] = os.path.join(out_dir, "edit.png")
    images_lib.save_png(paths["figure"], edit_figure(sources.images, known_one, edits, sources.sources, prompts,
                                                     scales))
    paths["npz"] = os.path.join(out_dir, "edits.npz")
    np.savez_compressed(paths["npz"], originals=sources.images, known=known.astype(np.uint8), edits=edits,
                        sources=np.array(sources.sources), prompts=np.array(prompts),
                        guidance=np.array(scales, np.float32), step=step, method=edit_method(config))
    print(f"Wrote {edits.shape[0]}x{edits.shape[1]}x{edits.shape[2]} edits (images x prompts x scales) by the "
          f"{edit_method(config)}: {paths['figure']} and {paths['npz']} (checkpoint step {step}); the kept "
          f"pixels differ from the originals by at most {error} at uint8.", flush=True)
  return paths
