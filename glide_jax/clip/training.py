"""Training a noised CLIP (GLIDE §2.4): a contrastive loss on (x_t, t, prompt), with t and x_t drawn as the
diffusion's training draws them, so that the image encoder scores the images the sampler sees.

A batch holds each example's image, its prompt in CLIP tokens and a group id: examples of one group are each
other's positives (the class of a class dataset, so that "seven" and "7" both describe every seven; the
caption itself for captioned data). The loss is CLIP's symmetric cross-entropy (Radford et al. 2021) over
the batch's image–text similarities, with the target spread evenly over an example's positives.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from glide_jax import data as data_lib
from glide_jax.clip.model import ClipConfig, image_embeddings, text_embeddings
from glide_jax.clip.tokenizer import ClipTokenizer
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.train.step import TrainState, apply_gradients


class ClipPromptTokens:
  """ClipTokenizer with the diffusion tokenizer's `tokenize_batch`/`encode` interface, so that the training
  data's `BatchSource` draws CLIP batches: the mask marks the tokens of SOT … EOT (its sum is the length)."""

  def __init__(self, tokenizer: ClipTokenizer):
    self.tokenizer = tokenizer

  def encode(self, text: str) -> list[int]:
    return [0, *self.tokenizer.encode(text), 0]  # With SOT and EOT, for the data's length check.

  def tokenize_batch(self, prompts: Sequence[str], context_length: int, warn: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    tokens, text_len = self.tokenizer.encode_prompts(prompts, context_length, warn=warn)
    return tokens, np.arange(context_length)[None, :] < text_len[:, None]


class ClipBatchSource(data_lib.BatchSource):
  """Batch `step` of a CLIP run, a pure function of (seed, step) like the diffusion's: images [b, H, W, C] in
  [−1, 1], CLIP tokens [b, L], text_len [b] and group [b] (int32; equal groups are positives)."""

  context_field = "clip.max_text_len"

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    batch = super().__call__(step)
    text_len = batch.pop("mask").sum(axis=1).astype(np.int32)
    if isinstance(self.dataset, data_lib.ImageDataset):
      group = self.dataset.labels[self.global_indices(step)[self.local_slice]].astype(np.int32)
    else:  # The caption's own tokens (a hash every process computes alike).
      group = np.array([zlib.crc32(row[:n].tobytes()) & 0x7FFFFFFF for row, n in zip(batch["tokens"], text_len)],
                       np.int32)
    return {**batch, "text_len": text_len, "group": group}


def contrastive_loss(logits: jax.Array, group: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(CLIP's symmetric cross-entropy, the share of images whose most similar text is a positive) of
  image–text logits [B, B] (row: image, column: text). Each row's and column's target is uniform over the
  examples of its group, so duplicates of a class in the batch are not pushed apart."""
  same = (group[:, None] == group[None, :]).astype(logits.dtype)
  image_loss = optax.softmax_cross_entropy(logits, same / jnp.sum(same, axis=1, keepdims=True))
  text_loss = optax.softmax_cross_entropy(logits.T, same.T / jnp.sum(same, axis=0)[:, None])
  hits = jnp.take_along_axis(same, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
  return 0.5 * (jnp.mean(image_loss) + jnp.mean(text_loss)), jnp.mean(hits)


def clip_loss_fn(params: Any, config: ClipConfig, diffusion: GaussianDiffusion, batch: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The contrastive loss of a batch at t ~ U{0, …, T−1} and x_t = q_sample(x_0, t, ε), ε ~ N(0, I)."""
  x_start = batch["images"]
  t_rng, noise_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (x_start.shape[0],), 0, diffusion.num_timesteps)
  x_t = diffusion.q_sample(x_start, t, jax.random.normal(noise_rng, x_start.shape, x_start.dtype))
  image = image_embeddings(config, params, x_t, t)
  text = text_embeddings(config, params, batch["tokens"], batch["text_len"])
  loss, accuracy = contrastive_loss(config.logit_scale * image @ text.T, batch["group"])
  return loss, {"loss": loss, "batch_accuracy": accuracy}


def clip_train_step(state: TrainState, batch: dict[str, jax.Array], base_rng: jax.Array, *, clip_config: ClipConfig,
                    diffusion: GaussianDiffusion, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of a CLIP run: its randomness is fold_in(base_rng, step); a non-finite step is skipped, the EMA
  kept, as in the diffusion's step (`apply_gradients`)."""
  rng = jax.random.fold_in(base_rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(clip_loss_fn, has_aux=True)(state.params, clip_config, diffusion,
                                                                          batch, rng)
  return apply_gradients(state, loss, metrics, grads, optimizer, config)
