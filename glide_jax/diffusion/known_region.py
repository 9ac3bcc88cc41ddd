"""Keeping the known part of an image while sampling the rest: two ways, as pure functions for the sampler.

`keep_known_xstart` is glide-text2im's inpainting notebook: at every step the predicted x̂_0 takes the
known image wherever the mask is 1, so an inpainting model's denoising never drifts there.
`replace_known` is the replacement method for a model trained without masks (Song et al. 2021, "Score-
Based Generative Modeling through SDEs", App. I.2; Lugmayr et al. 2022, RePaint, eq. 8 without
resampling): after every step the known region of x_{t−1} is replaced by the known image noised to t−1.
Both finish with `paste_known`, so the known pixels of the result are the input's exactly.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from glide_jax.diffusion.gaussian import GaussianDiffusion

REPLACEMENT_NOISE_STREAM = 0x6E01  # fold_in tag: the replacement's noise never reuses the sampler's.


def paste_known(x: jax.Array, image: jax.Array, known: jax.Array) -> jax.Array:
  """x with the known pixels (known = 1, [B, H, W, 1]) taken from image ([B, H, W, C])."""
  return jnp.where(known > 0.5, image, x)


def keep_known_xstart(image: jax.Array, known: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """x̂_0 → x̂_0 · (1 − m) + image · m (glide-text2im notebooks/inpaint.ipynb's denoised_fn)."""
  return lambda pred_xstart: paste_known(pred_xstart, image, known)


def replace_known(diffusion: GaussianDiffusion, image: jax.Array, known: jax.Array,
                  rng: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(x_{t−1}, t) → x_{t−1} whose known region is a draw of q(x_{t−1} | x_0 = image) (the image itself
  after the last step, t = 0); the draw's noise is normal(fold_in(rng, t))."""
  rng = jax.random.fold_in(rng, REPLACEMENT_NOISE_STREAM)

  def after_step(x: jax.Array, t: jax.Array) -> jax.Array:
    noise = jax.random.normal(jax.random.fold_in(rng, t[0]), x.shape, x.dtype)
    noised = diffusion.q_sample(image, jnp.maximum(t - 1, 0), noise)
    target = jnp.where((t > 0).reshape(-1, *([1] * (x.ndim - 1))), noised, image)
    return paste_known(x, target, known)

  return after_step
