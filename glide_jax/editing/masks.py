"""Masks for inpainting, as [.., H, W, 1] with 1 = known pixel (kept) and 0 = pixel to generate, the
convention of glide-text2im's inpainting model. Training draws them at random; editing names them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from glide_jax.errors import UserError

MASK_NAMES = ("top", "bottom", "left", "right")  # The half of the image to generate.
MIN_AREA, MAX_AREA = 0.2, 0.8  # Fraction of the image a random training rectangle covers.


def random_known_masks(rng: jax.Array, batch: int, size: int) -> jax.Array:
  """float32 [batch, size, size, 1] training masks: for half the examples one half of the image is to be
  generated (top, bottom, left or right, equally often), for the others a random rectangle covering 20-80%
  of it (area uniform in that range, aspect ratio log-uniform in [1/2, 2], position uniform)."""
  kind_rng, half_rng, area_rng, aspect_rng, y_rng, x_rng = jax.random.split(rng, 6)
  area = jax.random.uniform(area_rng, (batch,), minval=MIN_AREA, maxval=MAX_AREA)
  aspect = jnp.exp(jax.random.uniform(aspect_rng, (batch,), minval=-jnp.log(2.0), maxval=jnp.log(2.0)))
  h = jnp.clip(jnp.round(size * jnp.sqrt(area * aspect)), 1, size).astype(jnp.int32)
  w = jnp.clip(jnp.round(size * size * area / h), 1, size).astype(jnp.int32)
  y0 = jnp.floor(jax.random.uniform(y_rng, (batch,)) * (size - h + 1)).astype(jnp.int32)
  x0 = jnp.floor(jax.random.uniform(x_rng, (batch,)) * (size - w + 1)).astype(jnp.int32)
  # A half is the rectangle of the whole width (or height) starting at 0 or size/2.
  half = jax.random.randint(half_rng, (batch,), 0, 4)  # top, bottom, left, right
  use_half = jax.random.bernoulli(kind_rng, 0.5, (batch,))
  half_size = size // 2
  y0 = jnp.where(use_half, jnp.where(half == 1, size - half_size, 0), y0)
  h = jnp.where(use_half, jnp.where(half < 2, half_size, size), h)
  x0 = jnp.where(use_half, jnp.where(half == 3, size - half_size, 0), x0)
  w = jnp.where(use_half, jnp.where(half < 2, size, half_size), w)
  rows = jnp.arange(size)[None, :, None]
  cols = jnp.arange(size)[None, None, :]
  inside = ((rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
            & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None]))
  return (~inside).astype(jnp.float32)[..., None]


def box_mask(size: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
  """float32 [size, size, 1]: 0 inside the box [x0, x1) × [y0, y1) (pixels to generate), 1 elsewhere."""
  known = np.ones((size, size, 1), np.float32)
  known[y0:y1, x0:x1] = 0.0
  return known


def named_mask(spec: str, size: int) -> np.ndarray:
  """The known-pixel mask [size, size, 1] that `spec` names: "top", "bottom", "left" or "right" (that half
  is generated), or "box:x0,y0,x1,y1" (pixels of the model's image size, x1 and y1 exclusive)."""
  half = size // 2
  boxes = {"top": (0, 0, size, half), "bottom": (0, size - half, size, size),
           "left": (0, 0, half, size), "right": (size - half, 0, size, size)}
  if spec in boxes:
    return box_mask(size, *boxes[spec])
  if spec.startswith("box:"):
    try:
      x0, y0, x1, y1 = (int(v) for v in spec[4:].split(","))
    except ValueError:
      raise UserError(f"Mask {spec!r}: give the box as box:x0,y0,x1,y1 with four integers (pixels), e.g. "
                      f"box:0,16,32,32 for the bottom half of a {size}x{size} image.") from None
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
      raise UserError(f"Mask {spec!r}: the box must lie inside the {size}x{size} image with x0 < x1 and "
                      f"y0 < y1 (0 <= x0 < x1 <= {size}, 0 <= y0 < y1 <= {size}).")
    return box_mask(size, x0, y0, x1, y1)
  raise UserError(f"Unknown mask {spec!r}: use one of {', '.join(MASK_NAMES)}, box:x0,y0,x1,y1, or the path of "
                  f"a mask PNG (white = generate, black = keep).")


def known_region_error(edits: np.ndarray, images_uint8: np.ndarray, known: np.ndarray) -> int:
  """Largest |edit − original| at uint8 over the known pixels (0 when the known region is kept exactly)."""
  n = len(images_uint8)
  keep = np.broadcast_to((known > 0.5).reshape(n, 1, 1, *known.shape[1:]), edits.shape)
  diff = np.abs(edits.astype(int) - images_uint8.reshape(n, 1, 1, *images_uint8.shape[1:]).astype(int))
  return int(diff[keep].max(initial=0))


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
  """[h, w, ...] to [size, size, ...] by nearest neighbour, so a mask stays a mask (and a 64 px mask
  enlarged 4x is inpaint.ipynb's F.interpolate(mask, (256, 256), mode="nearest"))."""
  rows = ((np.arange(size) + 0.5) * mask.shape[0] / size).astype(int)
  cols = ((np.arange(size) + 0.5) * mask.shape[1] / size).astype(int)
  return mask[np.ix_(rows, cols)]
