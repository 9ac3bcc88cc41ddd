"""The ADM UNet of GLIDE (glide-text2im `unet.py`, `text2im_model.py`), NHWC.

Every attention block attends over [text tokens; image positions], with its own projection of the
shared text features to keys and values (text first).
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from glide_jax.model.layers import Dtype, GroupNorm32, attention, conv, dense, split_heads
from glide_jax.model.model_config import ModelConfig


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [cos(t f), sin(t f)] with f_i = max_period^(−i/half), cos half first (GLIDE/ADM)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
  return embedding


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2× upsampling of NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2×2 average pooling, stride 2."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """BigGAN-style residual block with scale-shift norm: GN·(1+scale)+shift, optional up/down resampling."""

  out_channels: int
  dropout: float
  num_groups: int = 32
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32
  norm_impl: str = "dot"

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    h = GroupNorm32(self.num_groups, swish=True, impl=self.norm_impl, name="in_norm")(x)
    if self.up or self.down:
      resample = upsample_nearest if self.up else avg_pool2
      h, x = resample(h), resample(x)
    h = conv(self.out_channels, 3, self.dtype, "in_conv")(h)
    emb_out = dense(2 * self.out_channels, jnp.float32, "emb_layers")(nn.silu(emb))
    scale, shift = jnp.split(emb_out[:, None, None, :], 2, axis=-1)
    h = GroupNorm32(self.num_groups, impl=self.norm_impl, name="out_norm")(h).astype(jnp.float32)
    h = nn.silu(h * (1.0 + scale) + shift).astype(self.dtype)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv(self.out_channels, 3, self.dtype, "out_conv", zero_init=True)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, self.dtype, "skip_connection")(x)
    return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
  """Self-attention over image positions with the text tokens' keys and values prepended; with
  `position_embedding`, a learned vector per image position (zero at initialisation) is added to the normalised
  features before their projections."""

  num_head_channels: int
  num_groups: int = 32
  dtype: Dtype = jnp.float32
  norm_impl: str = "dot"
  attention_impl: str = "xla"
  position_embedding: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, xf_out: Optional[jax.Array]) -> jax.Array:
    b, hgt, wid, c = x.shape
    heads = c // self.num_head_channels
    h = GroupNorm32(self.num_groups, impl=self.norm_impl, name="norm")(x).reshape(b, hgt * wid, c)
    if self.position_embedding:
      h = h + self.param("position_embedding", nn.initializers.zeros, (hgt * wid, c)).astype(h.dtype)
    q, k, v = split_heads(dense(3 * c, self.dtype, "qkv")(h), heads, 3)
    if xf_out is not None:
      ek, ev = split_heads(dense(2 * c, self.dtype, "encoder_kv")(xf_out), heads, 2)
      k = jnp.concatenate([ek, k], axis=1)
      v = jnp.concatenate([ev, v], axis=1)
    h = dense(c, self.dtype, "proj_out", zero_init=True)(attention(q, k, v, self.attention_impl))
    return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
  """ADM UNet conditioned on a timestep embedding (plus xf_proj) and shared text features xf_out."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, timesteps: jax.Array, xf_out: Optional[jax.Array], xf_proj: Optional[jax.Array],
               train: bool = False) -> jax.Array:
    c = self.config
    dtype, model_channels, channel_mult = c.compute_dtype, c.model_channels, c.channel_mult
    res = dict(dropout=c.dropout, num_groups=c.num_groups, dtype=dtype, norm_impl=c.norm_impl)
    attn = dict(num_head_channels=c.num_head_channels, num_groups=c.num_groups, dtype=dtype, norm_impl=c.norm_impl,
                attention_impl=c.attention_impl, position_embedding=c.position_embedding)
    emb = timestep_embedding(timesteps, model_channels)
    emb = dense(c.time_embed_dim, jnp.float32, "time_embed_0")(emb)
    emb = dense(c.time_embed_dim, jnp.float32, "time_embed_2")(nn.silu(emb))
    if xf_proj is not None:
      emb = emb + xf_proj.astype(emb.dtype)

    h = conv(channel_mult[0] * model_channels, 3, dtype, "input_blocks_0")(x.astype(dtype))
    skips = [h]
    ds, block = 1, 1
    for level, mult in enumerate(channel_mult):
      for _ in range(c.num_res_blocks):
        h = ResBlock(mult * model_channels, **res, name=f"input_blocks_{block}_0")(h, emb, train)
        if ds in c.attention_ds:
          h = AttentionBlock(**attn, name=f"input_blocks_{block}_1")(h, xf_out)
        skips.append(h)
        block += 1
      if level != len(channel_mult) - 1:
        h = self._downsample(h, emb, train, f"input_blocks_{block}_0", res)
        skips.append(h)
        block += 1
        ds *= 2

    h = ResBlock(h.shape[-1], **res, name="middle_block_0")(h, emb, train)
    h = AttentionBlock(**attn, name="middle_block_1")(h, xf_out)
    h = ResBlock(h.shape[-1], **res, name="middle_block_2")(h, emb, train)

    block = 0
    for level, mult in list(enumerate(channel_mult))[::-1]:
      for i in range(c.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(mult * model_channels, **res, name=f"output_blocks_{block}_0")(h, emb, train)
        sub = 1
        if ds in c.attention_ds:
          h = AttentionBlock(**attn, name=f"output_blocks_{block}_1")(h, xf_out)
          sub = 2
        if level and i == c.num_res_blocks:
          h = self._upsample(h, emb, train, f"output_blocks_{block}_{sub}", res)
          ds //= 2
        block += 1

    # GLIDE casts back to the input dtype (float32) before `out`, so the final norm and conv run in float32.
    h = GroupNorm32(c.num_groups, swish=True, impl=c.norm_impl, name="out_norm")(h.astype(jnp.float32))
    h = conv(c.out_channels, 3, jnp.float32, "out_conv", zero_init=True)(h)
    return h

  def _downsample(self, h, emb, train, name, res):
    if self.config.resblock_updown:
      return ResBlock(h.shape[-1], down=True, **res, name=name)(h, emb, train)
    if self.config.conv_resample:
      return conv(h.shape[-1], 3, self.config.compute_dtype, name, strides=2)(h)
    return avg_pool2(h)

  def _upsample(self, h, emb, train, name, res):
    if self.config.resblock_updown:
      return ResBlock(h.shape[-1], up=True, **res, name=name)(h, emb, train)
    h = upsample_nearest(h)
    if self.config.conv_resample:
      h = conv(h.shape[-1], 3, self.config.compute_dtype, name)(h)
    return h
