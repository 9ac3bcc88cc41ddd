"""Shared building blocks: PyTorch-default initialisers, fp32 norms and multi-head attention."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default Linear/Conv weight init (kaiming_uniform with a=√5) is U(±1/√fan_in), i.e. variance 1/(3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
zeros_init = nn.initializers.zeros


def dense(features: int, dtype: Dtype, name: str, zero_init: bool = False) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=zeros_init if zero_init else torch_default_init)


def conv(features: int, kernel: int, dtype: Dtype, name: str, zero_init: bool = False, use_bias: bool = True,
         strides: int = 1) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=kernel // 2, use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, name=name,
                 kernel_init=zeros_init if zero_init else torch_default_init)


class GroupNorm32(nn.Module):
  """GroupNorm (GLIDE: 32 groups, eps 1e-5) computed in float32, optional fused SiLU, cast back."""

  num_groups: int = 32
  swish: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32,
                     name="norm")(x.astype(jnp.float32))
    if self.swish:
      y = nn.silu(y)
    return y.astype(x.dtype)


def layer_norm(name: str) -> nn.LayerNorm:
  """LayerNorm with PyTorch's eps 1e-5, computed in float32."""
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def split_heads(x: jax.Array, num_heads: int, parts: int) -> list[jax.Array]:
  """[..., L, heads·parts·d] → `parts` arrays [..., L, heads, d], per-head interleaved as GLIDE lays out qkv."""
  *lead, length, width = x.shape
  x = x.reshape(*lead, length, num_heads, width // num_heads)
  return jnp.split(x, parts, axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax((q·d^-¼)(k·d^-¼)ᵀ) v per head with the softmax in float32 (no mask), as GLIDE's QKVAttention.

  q [B, Lq, H, D]; k, v [B, Lk, H, D] → [B, Lq, H·D] (heads concatenated head-major).
  """
  scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k * scale)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  return out.reshape(*out.shape[:2], -1)
