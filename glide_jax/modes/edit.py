"""--mode=edit: regenerate the masked part of images to match prompts, with the guided sampler.

An inpainting workdir (config.model.inpaint) edits as glide-text2im does; any other workdir edits by the
replacement method, so a base checkpoint can edit too (see diffusion/known_region.py). An upsampler's
workdir edits in two stages, as glide-text2im's inpaint notebook: the base run's edit, then its enlargement.
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
from glide_jax.editing.masks import known_region_error, resize_nearest
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.modes.sample import base_experiment, upsample
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
  tokens, mask = exp.prompt_rows(prompts, sampler)
  flat = batched.sample_in_batches(
      sampler, tokens[rows[:, 1]], mask[rows[:, 1]], np.asarray(scales, np.float32)[rows[:, 2]], rng,
      s.batch_size, exp.mesh.size, images=data_lib.to_model_range(images_uint8)[rows[:, 0]], known=known[rows[:, 0]])
  return images_lib.to_uint8(flat).reshape(n, p, k, *flat.shape[1:])


def edit_cascade(upsampler: Experiment, base: Experiment, images_spec: str, images: np.ndarray,
                 known_low: np.ndarray, prompts: list[str], scales: list[float],
                 rng: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """The two stages of glide-text2im's inpaint notebook: uint8 (the images at the base size [N, h, w, C],
  their base edits [N, P, S, h, w, C], the enlargements [N, P, S, H, W, C], the upsampler's step).

  The base run edits the images (read again from `images_spec` at its size) under `known_low` [h, w, 1],
  guided; the upsampler enlarges each edit, unguided, given the full-size `images` [N, H, W, C] and the mask
  enlarged by nearest neighbour. One model's parameters are in memory at a time."""
  upsampler.require_checkpoint()  # Before the base stage's work.
  low_data = upsampler.config.data.copy_and_resolve_references()
  low_data.image_size = base.model_config.image_size
  low_images = load_images(images_spec, low_data).images  # Each size from the file itself, as the notebook.
  base_params, _ = base.load_params(base.config.sample.use_ema)
  low = edit_grid(base, base_params, low_images, np.broadcast_to(known_low, (len(low_images), *known_low.shape)),
                  prompts, scales, jax.random.fold_in(rng, 0))
  del base_params
  known = resize_nearest(known_low, upsampler.model_config.image_size)
  n, p, k = low.shape[:3]
  image_of_row, prompt_of_row = np.repeat(np.arange(n), p * k), np.tile(np.repeat(np.arange(p), k), n)
  params, step = upsampler.load_params(upsampler.config.sample.use_ema)
  high = upsample(upsampler, params, low.reshape(-1, *low.shape[3:]), [prompts[j] for j in prompt_of_row],
                  jax.random.fold_in(rng, 1), images=images[image_of_row],
                  known=np.broadcast_to(known, (len(image_of_row), *known.shape)))
  return low_images, low, high.reshape(n, p, k, *high.shape[1:]), step


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Edits config.edit.images under config.edit.mask for every prompt and guidance scale; writes
  edits/edit.png (original | masked | edits) and edits/edits.npz; returns their paths.

  On an upsampler's workdir, `edit_cascade` with the base run in config.sample.base_workdir; the mask is then
  drawn at the base model's size (box coordinates in its pixels), as the notebook's is."""
  exp = Experiment(config, workdir)
  workdir = exp.open_workdir(create=False)
  base = base_experiment(exp) if exp.model_config.super_res else None
  e = config.edit
  sources = load_images(e.images, config.data)
  mask_size = (base or exp).model_config.image_size
  known_low = load_known_mask(e.mask, mask_size, sources.source_size)
  known_one = resize_nearest(known_low, config.data.image_size)
  known = np.broadcast_to(known_one, (len(sources.images), *known_one.shape)).copy()
  prompts = split_prompts(e.prompts) if e.prompts.strip() else list(exp.class_names())
  if not prompts:
    raise UserError("This config has no classes to prompt with (no dataset, or captions): give --config.edit.prompts "
                    "(comma-separated).")
  scales = guidance_scales(e)
  rng = stream_key(config.seed, "edit")
  if base is None:
    params, step = exp.load_params(config.sample.use_ema)
    low, edits = None, edit_grid(exp, params, sources.images, known, prompts, scales, rng)
    method = edit_method(config)
  else:
    low_images, low, edits, step = edit_cascade(exp, base, e.images, sources.images, known_low, prompts,
                                                scales, rng)
    method = (f"{edit_method(base.config)} ({mask_size} px), then the upsampler's {edit_method(config)} "
              f"({config.data.image_size} px)")
  kept = f"{known_region_error(edits, sources.images, known)}"
  if low is not None:
    low_error = known_region_error(low, low_images, np.broadcast_to(known_low, (len(low), *known_low.shape)))
    kept = f"{low_error} at {mask_size} px and {kept} at {config.data.image_size} px"
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
                        guidance=np.array(scales, np.float32), step=step, method=method,
                        **({} if low is None else {"low_res_edits": low}))
    print(f"Wrote {edits.shape[0]}x{edits.shape[1]}x{edits.shape[2]} edits (images x prompts x scales) by the "
          f"{method}: {paths['figure']} and {paths['npz']} (checkpoint step {step}); the kept pixels differ "
          f"from the originals by at most {kept} at uint8.", flush=True)
  return paths
