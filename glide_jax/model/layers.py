"""Shared building blocks: PyTorch-default initialisers, fp32 norms and multi-head attention."""

from __future__ import annotations

import functools
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


def conv(features: int, kernel: int, dtype: Dtype, name: str, zero_init: bool = False, strides: int = 1) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=kernel // 2,
                 dtype=dtype, param_dtype=jnp.float32, name=name,
                 kernel_init=zeros_init if zero_init else torch_default_init)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float,
               impl: str = "dot") -> jax.Array:
  """GroupNorm of channels-last x [N, ..., C]: per (example, group) mean and variance, then scale and bias.

  The same arithmetic as flax's nn.GroupNorm (fast variance E[x²] − E[x]², float32). The per-channel
  moments are pooled per group on [N, C], and the normalisation is one pass x·a + b with per-(example,
  channel) a and b, so C is never reshaped into [groups, C/groups] (an inner axis of 3 or 12 that defeats
  vectorisation on CPU). impl "dot" takes the moments as matrix-vector products over the spatial positions,
  which XLA's CPU backend runs in its fast dot kernels; "reduce" takes them as reductions, which GPU and TPU
  compilers fuse with the cast before them into one kernel (docs/benchmarks.md has both measured).
  """
  n, c = x.shape[0], x.shape[-1]
  spatial = tuple(range(1, x.ndim - 1))
  flat = x.reshape(n, -1, c)
  if impl == "dot":
    averager = jnp.full((flat.shape[1],), 1.0 / flat.shape[1], x.dtype)
    # Full float32 products: GPUs' TF32 and TPUs' bfloat16 passes would ruin E[x²] − E[x]².
    moment = functools.partial(jnp.einsum, "nkc,k->nc", precision=jax.lax.Precision.HIGHEST)
    mean_c, mean_sq_c = moment(flat, averager), moment(jnp.square(flat), averager)  # [N, C] each
  else:
    mean_c, mean_sq_c = jnp.mean(flat, axis=1), jnp.mean(jnp.square(flat), axis=1)
  per_group = lambda v: jnp.mean(v.reshape(n, num_groups, c // num_groups), axis=-1)  # noqa: E731
  mean = per_group(mean_c)
  var = jnp.maximum(per_group(mean_sq_c) - jnp.square(mean), 0.0)
  to_channels = lambda v: jnp.repeat(v, c // num_groups, axis=-1)  # noqa: E731
  a = to_channels(jax.lax.rsqrt(var + epsilon)) * scale
  b = bias - to_channels(mean) * a
  expand = lambda v: v.reshape((n,) + (1,) * len(spatial) + (c,))  # noqa: E731
  return x * expand(a) + expand(b)


class _GroupNormParams(nn.Module):
  """The affine parameters of a GroupNorm (flax nn.GroupNorm's names and init: scale 1, bias 0)."""

  num_groups: int
  epsilon: float
  impl: str = "dot"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return group_norm(x, scale, bias, self.num_groups, self.epsilon, self.impl)


class GroupNorm32(nn.Module):
  """GroupNorm (GLIDE: 32 groups, eps 1e-5) computed in float32, optional fused SiLU, cast back."""

  num_groups: int = 32
  swish: bool = False
  impl: str = "dot"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _GroupNormParams(self.num_groups, 1e-5, self.impl, name="norm")(x.astype(jnp.float32))
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


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla", causal: bool = False) -> jax.Array:
  """softmax((q·d^-¼)(k·d^-¼)ᵀ) v per head with the softmax in float32, as GLIDE's QKVAttention (no mask);
  `causal`: query i attends to keys 0..i only (GPT-2's and CLIP's text encoders).

  q [B, Lq, H, D]; k, v [B, Lk, H, D] → [B, Lq, H·D] (heads concatenated head-major). impl "cudnn" runs
  cuDNN's fused (flash) attention, which scales the logits by d^-½ once and keeps the softmax in float32;
  "xla" is the reference arithmetic below.
  """
  if impl != "xla":
    return fused_attention(q, k, v, impl, causal)
  scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k * scale)
  if causal:
    logits = jnp.where(jnp.tri(q.shape[1], k.shape[1], dtype=bool), logits, -jnp.inf)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  return out.reshape(*out.shape[:2], -1)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str, causal: bool = False) -> jax.Array:
  """`attention` through jax.nn.dot_product_attention ("cudnn": one fused kernel; "xla": the same function
  in XLA ops, which lets CPU tests check this call's layout and scale)."""
  out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]), is_causal=causal,
                                     implementation=implementation)
  return out.reshape(*out.shape[:2], -1)
