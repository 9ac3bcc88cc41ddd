"""Zero-shot classification by a noised CLIP: how well its image embeddings of x_t pick the right class prompt.

Each class's text embedding is the normalised mean of its prompts' (one per data.prompt_templates entry:
"seven", "7"), CLIP's prompt ensembling (Radford et al. 2021, §3.1.4); an image is assigned the class whose
embedding is most similar to its own at timestep t, x_t drawn with fixed noise.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glide_jax import data as data_lib
from glide_jax.clip.model import ClipConfig, image_embeddings, normalize, text_embeddings
from glide_jax.diffusion import GaussianDiffusion

ZERO_SHOT_FRACTIONS = (0.0, 0.25, 0.5, 0.75)  # Timesteps as fractions of T: t = 0, 250, 500, 750 of 1000.


def class_text_embeddings(config: ClipConfig, params: Any, tokens: np.ndarray, text_len: np.ndarray,
                          num_classes: int) -> jax.Array:
  """[num_classes, D] unit embeddings from prompts ordered class-major ([class][template] flattened)."""
  emb = text_embeddings(config, params, jnp.asarray(tokens), jnp.asarray(text_len))
  return normalize(jnp.mean(emb.reshape(num_classes, -1, emb.shape[-1]), axis=1))


def zero_shot_accuracy(config: ClipConfig, params: Any, diffusion: GaussianDiffusion, dataset: data_lib.ImageDataset,
                       class_embeddings: jax.Array, timesteps: Sequence[int], rng: jax.Array,
                       batch_size: int = 500) -> dict[int, float]:
  """{t: share of `dataset` classified right from x_t} for each t; batch i's noise is normal(fold_in(rng, i))."""

  @jax.jit
  def predict(params, images, t, key):
    x0 = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    x_t = diffusion.q_sample(x0, tt, jax.random.normal(key, x0.shape, x0.dtype))
    return jnp.argmax(image_embeddings(config, params, x_t, tt) @ class_embeddings.T, axis=1)

  result = {}
  for t in timesteps:
    correct = 0
    for i, start in enumerate(range(0, len(dataset), batch_size)):
      images = dataset.images[start:start + batch_size]
      pad = batch_size - len(images)  # One compiled shape.
      padded = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)]) if pad else images
      predicted = np.asarray(predict(params, padded, t, jax.random.fold_in(rng, i)))[:len(images)]
      correct += int(np.sum(predicted == dataset.labels[start:start + len(images)]))
    result[int(t)] = correct / len(dataset)
  return result


def zero_shot_timesteps(num_timesteps: int) -> list[int]:
  """The timesteps the zero-shot report uses: `ZERO_SHOT_FRACTIONS` of T."""
  return [int(round(f * num_timesteps)) for f in ZERO_SHOT_FRACTIONS]
