"""GLIDE's text-conditional UNet (glide-text2im `Text2ImUNet`): one text transformer, one UNet."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from glide_jax.model.model_config import ModelConfig
from glide_jax.model.text_transformer import TextTransformer
from glide_jax.model.unet import UNet


class Text2ImUNet(nn.Module):
  """ε and v prediction from (x_t, t, tokens, mask).

  `encode_text` runs once per prompt batch; `denoise` runs the UNet on its outputs, so a sampler can
  encode the prompts once and reuse the features at every step.
  """

  config: ModelConfig

  def setup(self):
    self.text_encoder = TextTransformer(self.config)
    self.unet = UNet(self.config)

  def encode_text(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(xf_out [B, L, xf_width], xf_proj [B, 4·model_channels])."""
    return self.text_encoder(tokens, mask)

  def denoise(self, x: jax.Array, timesteps: jax.Array, xf_out: jax.Array, xf_proj: jax.Array,
              train: bool = False, inpaint_image: Optional[jax.Array] = None,
              inpaint_mask: Optional[jax.Array] = None) -> jax.Array:
    """Model output [B, H, W, out_channels] (ε, v) given precomputed text features (and, for an inpainting
    model, the known image [B, H, W, C] and mask [B, H, W, 1], 1 = known)."""
    return self.unet(self.unet_input(x, inpaint_image, inpaint_mask), timesteps, xf_out, xf_proj, train=train)

  def unet_input(self, x: jax.Array, inpaint_image: Optional[jax.Array],
                 inpaint_mask: Optional[jax.Array]) -> jax.Array:
    """x_t, or for an inpainting model [x_t, image · mask, mask] along channels (glide-text2im's
    InpaintText2ImUNet; no image or mask: zeros, i.e. nothing known)."""
    if not self.config.inpaint:
      if inpaint_image is not None or inpaint_mask is not None:
        raise ValueError("A known image and mask go to an inpainting model (config.model.inpaint=True).")
      return x
    if inpaint_image is None:
      inpaint_image = jnp.zeros_like(x)
    if inpaint_mask is None:
      inpaint_mask = jnp.zeros((*x.shape[:-1], 1), x.dtype)
    inpaint_mask = inpaint_mask.astype(x.dtype)
    return jnp.concatenate([x, inpaint_image.astype(x.dtype) * inpaint_mask, inpaint_mask], axis=-1)

  def __call__(self, x: jax.Array, timesteps: jax.Array, tokens: jax.Array, mask: jax.Array,
               train: bool = False, inpaint_image: Optional[jax.Array] = None,
               inpaint_mask: Optional[jax.Array] = None) -> jax.Array:
    xf_out, xf_proj = self.encode_text(tokens, mask)
    return self.denoise(x, timesteps, xf_out, xf_proj, train=train, inpaint_image=inpaint_image,
                        inpaint_mask=inpaint_mask)


def init_params(model: Text2ImUNet, rng: jax.Array) -> Any:
  """Float32 parameters of `model` (their shapes depend on its config alone)."""
  c = model.config
  x = jnp.zeros((1, c.image_size, c.image_size, c.in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  tokens = jnp.zeros((1, c.text_ctx), jnp.int32)
  mask = jnp.zeros((1, c.text_ctx), bool)
  return model.init({"params": rng}, x, t, tokens, mask)["params"]


def count_params(params: Any) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
