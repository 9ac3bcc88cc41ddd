"""GLIDE's text encoder (glide-text2im `xf.py` and `Text2ImUNet.get_text_emb`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from glide_jax.model.layers import Dtype, attention, dense, layer_norm, split_heads
from glide_jax.model.model_config import ModelConfig


class MultiheadAttention(nn.Module):
  """Self-attention with GLIDE's per-head interleaved c_qkv layout: bidirectional (GLIDE), or causal."""

  width: int
  heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = split_heads(dense(3 * self.width, self.dtype, "c_qkv")(x), self.heads, 3)
    return dense(self.width, self.dtype, "c_proj")(attention(q, k, v, self.attention_impl, self.causal))


class ResidualAttentionBlock(nn.Module):
  """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x)), MLP 4× wide with exact GELU."""

  width: int
  heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layer_norm("ln_1")(x).astype(self.dtype)
    x = x + MultiheadAttention(self.width, self.heads, self.dtype, self.attention_impl, self.causal, name="attn")(h)
    h = layer_norm("ln_2")(x).astype(self.dtype)
    h = dense(4 * self.width, self.dtype, "c_fc")(h)
    h = nn.gelu(h, approximate=False)
    return x + dense(self.width, self.dtype, "c_proj")(h)


class TextTransformer(nn.Module):
  """Tokens and mask → per-token features xf_out [B, L, xf_width] and xf_proj [B, time_embed_dim].

  Embedding = token embedding + learned positions; where the mask is False the vector is replaced by a
  learned per-position padding embedding (GLIDE's xf_padding), so the empty prompt is exactly the padding
  embeddings whatever its ids. xf_proj projects the feature at the *last* position (as GLIDE does). With
  `xf_embedding_skip`, xf_out is [B, L, 2·xf_width]: the transformer's features, then each position's embedding
  layer-normed; xf_proj still reads the transformer's feature only.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.config
    token_embedding = nn.Embed(c.vocab_size, c.xf_width, embedding_init=nn.initializers.normal(0.02),
                               name="token_embedding")
    positional = self.param("positional_embedding", nn.initializers.normal(0.01), (c.text_ctx, c.xf_width))
    padding = self.param("padding_embedding", nn.initializers.normal(0.01), (c.text_ctx, c.xf_width))
    x = token_embedding(tokens) + positional[None]
    x = embedded = jnp.where(mask[..., None], x, padding[None])
    for i in range(c.xf_layers):
      x = ResidualAttentionBlock(c.xf_width, c.xf_heads, c.compute_dtype, c.attention_impl, c.xf_causal,
                                 name=f"resblocks_{i}")(x)
    xf_out = layer_norm("final_ln")(x)
    xf_proj = dense(c.time_embed_dim, jnp.float32, "transformer_proj")(xf_out[:, -1])
    if c.xf_embedding_skip:
      xf_out = jnp.concatenate([xf_out, layer_norm("embedding_ln")(embedded)], axis=-1)
    return xf_out.astype(c.compute_dtype), xf_proj
