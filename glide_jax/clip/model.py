"""GLIDE's noised CLIP (glide-text2im `glide_text2im/clip/`): the timestep-aware image encoder, the text
encoder, their normalised embeddings and the CLIP-guidance gradient of `CLIPModel.cond_fn`.

Parameter names mirror the reference state dicts (`blocks.block_0.f_attn.f_q.w` → `block_0/f_attn/f_q/kernel`)
so that `glide_jax.clip.keymap` is a renaming plus layout changes. Images are NHWC in the diffusion model's
range (≈ [-1, 1]); `ImageEncoder` maps them to CLIP's pixel scale itself. Everything runs in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from glide_jax.errors import ConfigError

# CLIP's fixed per-channel pixel statistics (encoders.py `image_channel_means/stds`); not in the state dict.
IMAGE_CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
IMAGE_CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)
# glide-text2im's config.yaml key → ClipConfig field. The reference's `beta_schedule` is kept as it is.
_REFERENCE_KEYS = {
    "image_size": "image_size", "patch_size": "patch_size", "n_timesteps": "n_timesteps",
    "n_head_image": "image_heads", "n_head_state_image": "image_head_width", "n_xf_blocks_image": "image_blocks",
    "n_head_text": "text_heads", "n_head_state_text": "text_head_width", "n_xf_blocks_text": "text_blocks",
    "n_vocab": "n_vocab", "max_text_len": "max_text_len", "n_embd": "embed_dim", "logit_scale": "logit_scale",
    "beta_schedule": "beta_schedule",
}
Params = Any  # A Flax parameter tree.


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """The noised CLIP's sizes; the defaults are the released model's (glide-text2im `clip/config.yaml`).

  Encoder widths are heads × head width, as in the reference. `logit_scale` is the scale itself (100), not
  its log: the reference keeps log(logit_scale) and applies exp. `beta_schedule` is the diffusion schedule the
  image encoder was trained on; its timesteps are that schedule's original (unrespaced) step indices.
  `image_channels` is 3 for the reference (RGB); a CLIP trained here on grey images (MNIST) takes 1.
  """

  image_size: int = 64
  image_channels: int = 3
  patch_size: int = 4
  n_timesteps: int = 1000
  image_heads: int = 12
  image_head_width: int = 64
  image_blocks: int = 12
  text_heads: int = 8
  text_head_width: int = 64
  text_blocks: int = 12
  n_vocab: int = 65536
  max_text_len: int = 77
  embed_dim: int = 512
  logit_scale: float = 100.0
  beta_schedule: str = "squaredcos_cap_v2"

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"CLIP config {field.name} = {value!r} is invalid: give a positive integer.")
    if self.image_size % self.patch_size:
      raise ConfigError(f"CLIP config image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
    if not self.logit_scale > 0:
      raise ConfigError(f"CLIP config logit_scale = {self.logit_scale!r} is invalid: give a positive number.")

  @classmethod
  def from_reference(cls, config: Mapping[str, Any]) -> ClipConfig:
    """From a glide-text2im `config.yaml`-style dict (every key needed, no unknown ones)."""
    unknown = sorted(set(config) - set(_REFERENCE_KEYS))
    missing = sorted(set(_REFERENCE_KEYS) - set(config))
    if unknown or missing:
      raise ConfigError(f"Not a glide-text2im CLIP config: unknown keys {unknown}, missing keys {missing}.")
    values = {field: config[key] for key, field in _REFERENCE_KEYS.items()}
    values["logit_scale"] = float(values["logit_scale"])
    return cls(**values)

  def to_reference(self) -> dict[str, Any]:
    """The glide-text2im `config.yaml` dict of this config (the inverse of `from_reference`)."""
    return {key: getattr(self, field) for key, field in _REFERENCE_KEYS.items()}

  @property
  def image_width(self) -> int:
    return self.image_heads * self.image_head_width

  @property
  def text_width(self) -> int:
    return self.text_heads * self.text_head_width

  @property
  def image_tokens(self) -> int:
    """The timestep token plus one token per patch."""
    return 1 + (self.image_size // self.patch_size) ** 2


def _gelu(x: jax.Array) -> jax.Array:
  # The reference's F.gelu is the exact erf form; the tanh approximation moves the outputs by ~3e-4.
  return jax.nn.gelu(x, approximate=False)


def _layer_norm(name: str) -> nn.LayerNorm:
  """The reference's LayerNorm: eps 1e-5 (its `g`, `b` are Flax's `scale`, `bias`)."""
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def _affine(features: int, std: float, name: str, use_bias: bool = True) -> nn.Dense:
  """The reference's `Affine` (a Linear) with its N(0, std²) weight init and zero bias."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.normal(std), name=name)


class AttentionResblock(nn.Module):
  """x + f_c(attention(ln(x))): plain full or causal attention, logits scaled by 1/√head_width.

  The reference pads the context to a multiple of 32 with a −1e10 mask bias; that equals attention over the
  real tokens alone (bidirectional for images, causal for text), which is what this computes. f_k has no bias.
  """

  heads: int
  head_width: int
  n_resblocks: int  # For the init of f_c: 2 × blocks, as in the reference.
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = self.heads * self.head_width
    h = _layer_norm("ln")(x)
    split = lambda y: y.reshape(*y.shape[:-1], self.heads, self.head_width)  # noqa: E731  (head-major channels)
    q = split(_affine(width, 1 / math.sqrt(width), "f_q")(h))
    k = split(_affine(width, 1 / math.sqrt(width), "f_k", use_bias=False)(h))
    v = split(_affine(width, 1 / math.sqrt(width), "f_v")(h))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_width)
    if self.causal:
      length = x.shape[1]
      allowed = jnp.tril(jnp.ones((length, length), bool))
      logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(x.shape)
    return x + _affine(width, 1 / math.sqrt(width * self.n_resblocks**2), "f_c")(out)


class FullyConnectedResblock(nn.Module):
  """x + f_2(gelu(f_1(ln(x)))), 4× wide, exact GELU."""

  width: int
  n_resblocks: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _layer_norm("ln")(x)
    h = _gelu(_affine(4 * self.width, math.sqrt(2 / (4 * self.width)), "f_1")(h))
    return x + _affine(self.width, 1 / math.sqrt(self.width * self.n_resblocks**2), "f_2")(h)


class TransformerBlock(nn.Module):
  heads: int
  head_width: int
  n_resblocks: int
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = AttentionResblock(self.heads, self.head_width, self.n_resblocks, self.causal, name="f_attn")(x)
    return FullyConnectedResblock(self.heads * self.head_width, self.n_resblocks, name="f_mlp")(x)


class ImageEmbedding(nn.Module):
  """Tokens of a noised image: [w_t[t]; patch_proj(normalised pixels)] + w_pos, then LayerNorm.

  The learned row w_t[t] of the timestep table takes the place of CLIP's class token.
  """

  config: ClipConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    c = self.config
    width = c.image_width
    w_t = self.param("w_t", nn.initializers.normal(1 / math.sqrt(width)), (c.n_timesteps, width))
    w_pos = self.param("w_pos", nn.initializers.normal(1 / math.sqrt(width)), (c.image_tokens, width))
    # (x + 1) · 127.5 is CLIPModel's map to [0, 255]; the channel statistics are the encoder's own.
    pixels = (x.astype(jnp.float32) + 1) * 127.5
    means, stds = jnp.asarray(IMAGE_CHANNEL_MEANS), jnp.asarray(IMAGE_CHANNEL_STDS)
    if c.image_channels != 3:  # Grey images: the statistics' mean over RGB, for every channel.
      means, stds = jnp.mean(means, keepdims=True), jnp.mean(stds, keepdims=True)
    pixels = (pixels - means) / stds
    patches = nn.Conv(width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size), padding="VALID",
                      use_bias=False, kernel_init=nn.initializers.normal(math.sqrt(2 / (width * c.patch_size**2))),
                      name="patch_proj")(pixels)
    patches = patches.reshape(x.shape[0], -1, width)  # Row-major patches, as the reference's reshape.
    tokens = jnp.concatenate([w_t[t][:, None], patches], axis=1) + w_pos[None]
    return _layer_norm("ln")(tokens)


class ImageEncoder(nn.Module):
  """Noised images x_t [B, H, W, 3] in the diffusion model's range and original-schedule timesteps t [B]
  → raw (unnormalised) image features [B, embed_dim], read from the timestep token.

  This is the reference's `ImageEncoder((x_t + 1) · 127.5, t)`: the map to [0, 255] happens here.
  `return_probe_features` gives the residual stream at token 0 [B, image_width] before the output LN.
  t must lie in [0, n_timesteps): JAX clamps out-of-range indices rather than failing.
  """

  config: ClipConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, return_probe_features: bool = False) -> jax.Array:
    c = self.config
    if x.shape[1:] != (c.image_size, c.image_size, c.image_channels):
      raise ValueError(f"expected images [B, {c.image_size}, {c.image_size}, {c.image_channels}], got {x.shape}")
    h = ImageEmbedding(c, name="input")(x, t)
    for i in range(c.image_blocks):
      h = TransformerBlock(c.image_heads, c.image_head_width, 2 * c.image_blocks, causal=False, name=f"block_{i}")(h)
    return _FeatureExtractor(c.embed_dim, c.image_width, name="output")(h[:, 0], return_probe_features)


class TextEncoder(nn.Module):
  """CLIP BPE tokens [B, L ≤ max_text_len] (SOT … EOT, zero-padded) and lengths [B] counting SOT and EOT
  → raw text features [B, embed_dim], read at position text_len − 1 (the EOT token) of a causal transformer.

  `return_probe_features` gives the residual stream there [B, text_width] before the output LN. Tokens after
  EOT cannot change the result (causal attention). There is no LN before the first block.
  """

  config: ClipConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, text_len: jax.Array, return_probe_features: bool = False) -> jax.Array:
    c = self.config
    if tokens.ndim != 2 or tokens.shape[1] > c.max_text_len:
      raise ValueError(f"expected tokens [B, L <= {c.max_text_len}], got {tokens.shape}")
    h = _TextEmbedding(c, name="input")(tokens)
    for i in range(c.text_blocks):
      h = TransformerBlock(c.text_heads, c.text_head_width, 2 * c.text_blocks, causal=True, name=f"block_{i}")(h)
    last = jnp.take_along_axis(h, (jnp.asarray(text_len) - 1)[:, None, None], axis=1)[:, 0]
    return _FeatureExtractor(c.embed_dim, c.text_width, name="output")(last, return_probe_features)


class _TextEmbedding(nn.Module):
  config: ClipConfig

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    c = self.config
    w_voc = self.param("w_voc", nn.initializers.normal(0.02), (c.n_vocab, c.text_width))
    w_pos = self.param("w_pos", nn.initializers.normal(0.01), (c.max_text_len, c.text_width))
    return jnp.take(w_voc, tokens, axis=0) + w_pos[None, : tokens.shape[1]]


class _FeatureExtractor(nn.Module):
  """One token's residual stream → f(ln(h)), f without bias (or h itself as the probe features)."""

  embed_dim: int
  width: int

  @nn.compact
  def __call__(self, h: jax.Array, return_probe_features: bool) -> jax.Array:
    out = _affine(self.embed_dim, math.sqrt(2 / (self.width + self.embed_dim)), "f", use_bias=False)(
        _layer_norm("ln")(h))
    return h if return_probe_features else out  # (Both parameters exist whatever the flag.)


def init_clip_params(config: ClipConfig, rng: jax.Array) -> dict[str, Params]:
  """Fresh parameters {"image_enc": …, "text_enc": …} with the reference's initialisations."""
  image_rng, text_rng = jax.random.split(rng)
  x = jnp.zeros((1, config.image_size, config.image_size, config.image_channels), jnp.float32)
  tokens = jnp.zeros((1, config.max_text_len), jnp.int32)
  ones = jnp.ones((1,), jnp.int32)
  return {"image_enc": ImageEncoder(config).init(image_rng, x, ones)["params"],
          "text_enc": TextEncoder(config).init(text_rng, tokens, ones)["params"]}


def normalize(z: jax.Array) -> jax.Array:
  """z / (‖z‖ + 1e-12) along the last axis, as CLIPModel normalises."""
  return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)


def image_embeddings(config: ClipConfig, params: Mapping[str, Params], x_t: jax.Array, t: jax.Array) -> jax.Array:
  """Unit-norm image embeddings [B, embed_dim] of noised images x_t (NHWC, model range) at timesteps t."""
  return normalize(ImageEncoder(config).apply({"params": params["image_enc"]}, x_t, t))


def text_embeddings(config: ClipConfig, params: Mapping[str, Params], tokens: jax.Array,
                    text_len: jax.Array) -> jax.Array:
  """Unit-norm text embeddings [B, embed_dim] of CLIP BPE tokens [B, L] with lengths [B]."""
  return normalize(TextEncoder(config).apply({"params": params["text_enc"]}, tokens, text_len))


def clip_loss(config: ClipConfig, params: Mapping[str, Params], x_t: jax.Array, t: jax.Array,
              text_emb: jax.Array) -> jax.Array:
  """logit_scale · Σ_b text_emb[b]·image_emb[b]: what CLIPModel.cond_fn differentiates (a sum over the batch,
  so each image's gradient is its own)."""
  return config.logit_scale * jnp.sum(text_emb * image_embeddings(config, params, x_t, t))


def clip_guidance_grad(config: ClipConfig, params: Mapping[str, Params], x_t: jax.Array, t: jax.Array,
                       text_emb: jax.Array, grad_scale: float | jax.Array = 1.0) -> jax.Array:
  """grad_scale · d clip_loss / d x_t [B, H, W, 3], as CLIPModel.cond_fn returns.

  text_emb are `text_embeddings` of the prompts, computed once (cond_fn computes them outside the gradient
  too). t are original-schedule steps: with a respaced diffusion, map respaced indices back first.
  """
  grad = jax.grad(lambda x: clip_loss(config, params, x, t, jax.lax.stop_gradient(text_emb)))(x_t)
  return grad * grad_scale
