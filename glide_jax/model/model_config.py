"""The typed, frozen description of a text-to-image model, built once from `config.model` + `config.data`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

# Compute dtypes the model runs in (parameters are always float32); the config validator reads this table.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every hyperparameter of `Text2ImUNet`, its `UNet` and its `TextTransformer`.

  Frozen and made of tuples, so it is hashable and can be a Flax module attribute. Values are checked by
  `glide_jax.config.validate_config` before one is built.
  """

  image_size: int
  in_channels: int
  model_channels: int
  channel_mult: tuple[int, ...]
  num_res_blocks: int
  attention_resolutions: tuple[int, ...]  # In pixels; the middle block always has attention.
  num_head_channels: int
  num_groups: int
  dropout: float
  learn_sigma: bool
  resblock_updown: bool
  conv_resample: bool
  vocab_size: int
  text_ctx: int
  xf_width: int
  xf_layers: int
  xf_heads: int
  dtype: str = "float32"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int) -> "ModelConfig":
    """The model `config.model` describes, for `config.data`'s images and a tokenizer of `vocab_size` ids."""
    m = config.model
    return cls(
        image_size=int(config.data.image_size), in_channels=int(config.data.channels),
        model_channels=int(m.model_channels), channel_mult=tuple(int(x) for x in m.channel_mult),
        num_res_blocks=int(m.num_res_blocks), attention_resolutions=tuple(int(r) for r in m.attention_resolutions),
        num_head_channels=int(m.num_head_channels), num_groups=int(m.num_groups), dropout=float(m.dropout),
        learn_sigma=bool(m.learn_sigma), resblock_updown=bool(m.resblock_updown),
        conv_resample=bool(m.conv_resample), vocab_size=int(vocab_size), text_ctx=int(m.text_ctx),
        xf_width=int(m.xf_width), xf_layers=int(m.xf_layers), xf_heads=int(m.xf_heads), dtype=str(m.dtype))

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @property
  def out_channels(self) -> int:
    """ε, plus the variance interpolation v when the variance is learned."""
    return self.in_channels * (2 if self.learn_sigma else 1)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.model_channels

  @property
  def attention_ds(self) -> tuple[int, ...]:
    """Downsampling rates (image_size // resolution) at which the UNet places attention blocks."""
    return tuple(self.image_size // r for r in self.attention_resolutions)
