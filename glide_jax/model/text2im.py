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
    """(xf_out [B, L, xf_width] (2·xf_width with xf_embedding_skip), xf_proj [B, 4·model_channels])."""
    return self.text_encoder(tokens, mask)

  def denoise(self, x: jax.Array, timesteps: jax.Array, xf_out: jax.Array, xf_proj: jax.Array,
              train: bool = False, inpaint_image: Optional[jax.Array] = None,
              inpaint_mask: Optional[jax.Array] = None, low_res: Optional[jax.Array] = None) -> jax.Array:
    """Model output [B, H, W, out_channels] (ε, v) given precomputed text features; an inpainting model also
    takes the known image [B, H, W, C] and mask [B, H, W, 1] (1 = known), an upsampler the low-resolution
    image [B, h, w, C]."""
    return self.unet(self.unet_input(x, inpaint_image, inpaint_mask, low_res), timesteps, xf_out, xf_proj,
                     train=train)

  def unet_input(self, x: jax.Array, inpaint_image: Optional[jax.Array] = None,
                 inpaint_mask: Optional[jax.Array] = None, low_res: Optional[jax.Array] = None) -> jax.Array:
    """The channels the UNet sees, in glide-text2im's order: x_t; then for an inpainting model image · mask
    and mask (InpaintText2ImUNet; none given: zeros, i.e. nothing known); then for an upsampler the
    low-resolution image upsampled bilinearly to x_t's size (SuperResText2ImUNet)."""
    c = self.config
    if not c.inpaint and (inpaint_image is not None or inpaint_mask is not None):
      raise ValueError("A known image and mask go to an inpainting model (config.model.inpaint=True).")
    if c.super_res != (low_res is not None):
      raise ValueError("An upsampler (config.model.low_res_size > 0) needs the low-resolution image, and only "
                       "an upsampler takes one.")
    parts = [x]
    if c.inpaint:
      if inpaint_image is None:
        inpaint_image = jnp.zeros_like(x)
      if inpaint_mask is None:
        inpaint_mask = jnp.zeros((*x.shape[:-1], 1), x.dtype)
      inpaint_mask = inpaint_mask.astype(x.dtype)
      parts += [inpaint_image.astype(x.dtype) * inpaint_mask, inpaint_mask]
    if c.super_res:
      parts.append(upsample_bilinear(low_res.astype(x.dtype), x.shape[1:3]))
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else x

  def __call__(self, x: jax.Array, timesteps: jax.Array, tokens: jax.Array, mask: jax.Array,
               train: bool = False, inpaint_image: Optional[jax.Array] = None,
               inpaint_mask: Optional[jax.Array] = None, low_res: Optional[jax.Array] = None) -> jax.Array:
    xf_out, xf_proj = self.encode_text(tokens, mask)
    return self.denoise(x, timesteps, xf_out, xf_proj, train=train, inpaint_image=inpaint_image,
                        inpaint_mask=inpaint_mask, low_res=low_res)


def upsample_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, h, w, C] → [B, *size, C], bilinear with half-pixel centres: PyTorch's
  `F.interpolate(mode="bilinear", align_corners=False)`, which glide-text2im's upsamplers use (at the
  borders both clamp to the edge pixels)."""
  return jax.image.resize(images, (images.shape[0], *size, images.shape[-1]), "linear", antialias=False)


def downsample(images: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] → [B, size, size, C] with an antialiased linear filter: the low-resolution image an
  upsampler learns to upsample."""
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear", antialias=True)


def init_params(model: Text2ImUNet, rng: jax.Array) -> Any:
  """Float32 parameters of `model` (their shapes depend on its config alone)."""
  c = model.config
  x = jnp.zeros((1, c.image_size, c.image_size, c.in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  tokens = jnp.zeros((1, c.text_ctx), jnp.int32)
  mask = jnp.zeros((1, c.text_ctx), bool)
  low_res = jnp.zeros((1, c.low_res_size, c.low_res_size, c.in_channels), jnp.float32) if c.super_res else None
  return model.init({"params": rng}, x, t, tokens, mask, low_res=low_res)["params"]


def count_params(params: Any) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
