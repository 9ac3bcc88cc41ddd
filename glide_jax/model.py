"""GLIDE's text-conditional UNet (glide-text2im `Text2ImUNet`): one text transformer, one UNet."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from glide_jax.layers import Dtype
from glide_jax.text_transformer import TextTransformer
from glide_jax.tokenizer import get_tokenizer
from glide_jax.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Text2ImUNet(nn.Module):
  """ε and v prediction from (x_t, t, tokens, mask).

  `encode_text` runs once per prompt batch; `denoise` runs the UNet on its outputs, so a sampler can
  encode the prompts once and reuse the features at every step.
  """

  image_size: int
  in_channels: int
  model_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  attention_resolutions: Sequence[int]
  num_head_channels: int
  dropout: float
  learn_sigma: bool
  resblock_updown: bool
  conv_resample: bool
  num_groups: int
  vocab_size: int
  text_ctx: int
  xf_width: int
  xf_layers: int
  xf_heads: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.text_encoder = TextTransformer(
        vocab_size=self.vocab_size, context_length=self.text_ctx, width=self.xf_width, layers=self.xf_layers,
        heads=self.xf_heads, out_dim=4 * self.model_channels, dtype=self.dtype)
    self.unet = UNet(
        model_channels=self.model_channels,
        out_channels=self.in_channels * (2 if self.learn_sigma else 1),
        num_res_blocks=self.num_res_blocks,
        attention_ds=tuple(self.image_size // r for r in self.attention_resolutions),
        channel_mult=tuple(self.channel_mult), dropout=self.dropout, num_head_channels=self.num_head_channels,
        num_groups=self.num_groups, resblock_updown=self.resblock_updown, conv_resample=self.conv_resample,
        dtype=self.dtype)

  def encode_text(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(xf_out [B, L, W], xf_proj [B, 4·model_channels])."""
    return self.text_encoder(tokens, mask)

  def denoise(self, x: jax.Array, timesteps: jax.Array, xf_out: jax.Array, xf_proj: jax.Array,
              train: bool = False) -> jax.Array:
    """Model output [B, H, W, 2C] (ε, v) given precomputed text features."""
    return self.unet(x, timesteps, xf_out, xf_proj, train=train)

  def __call__(self, x: jax.Array, timesteps: jax.Array, tokens: jax.Array, mask: jax.Array,
               train: bool = False) -> jax.Array:
    xf_out, xf_proj = self.encode_text(tokens, mask)
    return self.denoise(x, timesteps, xf_out, xf_proj, train=train)


def create_model(config: ml_collections.ConfigDict) -> Text2ImUNet:
  """The model a config describes (config.model, config.data.image_size and channels)."""
  m = config.model
  tokenizer = get_tokenizer(m.tokenizer)
  return Text2ImUNet(
      image_size=config.data.image_size, in_channels=config.data.channels, model_channels=m.model_channels,
      channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
      attention_resolutions=tuple(m.attention_resolutions), num_head_channels=m.num_head_channels,
      dropout=m.dropout, learn_sigma=m.learn_sigma, resblock_updown=m.resblock_updown,
      conv_resample=m.conv_resample, num_groups=m.num_groups, vocab_size=tokenizer.vocab_size,
      text_ctx=m.text_ctx, xf_width=m.xf_width, xf_layers=m.xf_layers, xf_heads=m.xf_heads,
      dtype=DTYPES[m.dtype])


def init_params(model: Text2ImUNet, rng: jax.Array, batch_size: int = 1) -> Any:
  """Float32 parameters of `model` (shapes only depend on the config, not on batch_size)."""
  x = jnp.zeros((batch_size, model.image_size, model.image_size, model.in_channels), jnp.float32)
  t = jnp.zeros((batch_size,), jnp.int32)
  tokens = jnp.zeros((batch_size, model.text_ctx), jnp.int32)
  mask = jnp.zeros((batch_size, model.text_ctx), bool)
  return model.init({"params": rng}, x, t, tokens, mask)["params"]


def count_params(params: Any) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
