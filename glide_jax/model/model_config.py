"""The typed, frozen description of a text-to-image model, built once from `config.model` + `config.data`."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

# Compute dtypes the model runs in (parameters are always float32); the config validator reads this table.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How attention and GroupNorm statistics are computed (see layers.attention and layers.group_norm).
ATTENTION_IMPLS = ("xla", "cudnn")
NORM_IMPLS = ("dot", "reduce")
# The compute-only fields: each may also be "auto", which `resolve_kernels` picks per platform. They change
# neither the parameters nor what the model computes, only how (and how exactly) it is computed.
COMPUTE_FIELDS = ("dtype", "attention_impl", "norm_impl")
# cuDNN's fused attention takes head widths that are multiples of 8, up to 128, in 16-bit floats.
CUDNN_MAX_HEAD_DIM = 128


def platform() -> str:
  """'cpu', 'gpu' (CUDA), 'rocm' or 'tpu': the default backend, with ROCm told apart from CUDA."""
  backend = jax.default_backend()
  if backend == "gpu":
    version = str(getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")).lower()
    return "rocm" if "rocm" in version or "hip" in version else "gpu"
  return backend


def cudnn_attention_unsupported(head_dims: tuple[int, ...], dtype: str, on: str) -> Optional[str]:
  """Why cuDNN's fused attention cannot run these heads here, or None when it can."""
  if on != "gpu":
    return f"it needs an NVIDIA GPU (this run's platform is {on})"
  if dtype != "bfloat16":
    return f"it needs model.dtype='bfloat16' (here {dtype!r})"
  bad = [d for d in head_dims if d % 8 or d > CUDNN_MAX_HEAD_DIM]
  if bad:
    return f"it needs head widths that are multiples of 8 up to {CUDNN_MAX_HEAD_DIM} (here {bad})"
  return None


def resolve_kernels(m: ml_collections.ConfigDict, on: Optional[str] = None) -> dict[str, str]:
  """The dtype, attention and norm implementation `config.model` asks for, with each "auto" made concrete.

  "auto": bfloat16 compute on GPU and TPU (parameters stay float32), float32 on CPU; cuDNN's fused
  attention on an NVIDIA GPU where it applies, else XLA's; GroupNorm moments as matrix-vector products on
  CPU (fast there), as fused reductions elsewhere (docs/benchmarks.md has the measurements).
  """
  on = on or platform()
  dtype = m.dtype if m.dtype != "auto" else ("float32" if on == "cpu" else "bfloat16")
  attention = m.attention_impl
  if attention == "auto":
    heads = (int(m.num_head_channels), int(m.xf_width) // max(int(m.xf_heads), 1))
    attention = "xla" if cudnn_attention_unsupported(heads, dtype, on) else "cudnn"
  norm = m.norm_impl if m.norm_impl != "auto" else ("dot" if on == "cpu" else "reduce")
  return {"dtype": dtype, "attention_impl": attention, "norm_impl": norm}


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
  xf_causal: bool = False  # Each token attends to itself and earlier ones (GPT-2, CLIP); GLIDE's: to all.
  xf_embedding_skip: bool = False  # xf_out also holds each token's own (normed) embedding: 2·xf_width wide.
  inpaint: bool = False  # Also takes the known image (times the mask) and the mask: glide-text2im's inpainter.
  low_res_size: int = 0  # > 0: an upsampler from images this size (glide-text2im's SuperResText2ImUNet).
  position_embedding: bool = False  # A learned embedding per image position in every attention block.
  dtype: str = "float32"
  attention_impl: str = "xla"
  norm_impl: str = "dot"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int,
                  on: Optional[str] = None) -> "ModelConfig":
    """The model `config.model` describes, for `config.data`'s images and a tokenizer of `vocab_size` ids,
    with its "auto" compute fields resolved for platform `on` (default: this process's backend)."""
    m = config.model
    return cls(
        image_size=int(config.data.image_size), in_channels=int(config.data.channels),
        model_channels=int(m.model_channels), channel_mult=tuple(int(x) for x in m.channel_mult),
        num_res_blocks=int(m.num_res_blocks), attention_resolutions=tuple(int(r) for r in m.attention_resolutions),
        num_head_channels=int(m.num_head_channels), num_groups=int(m.num_groups), dropout=float(m.dropout),
        learn_sigma=bool(m.learn_sigma), resblock_updown=bool(m.resblock_updown),
        conv_resample=bool(m.conv_resample), vocab_size=int(vocab_size), text_ctx=int(m.text_ctx),
        xf_width=int(m.xf_width), xf_layers=int(m.xf_layers), xf_heads=int(m.xf_heads),
        xf_causal=bool(m.xf_causal), xf_embedding_skip=bool(m.xf_embedding_skip),
        inpaint=bool(m.inpaint), low_res_size=int(m.low_res_size), position_embedding=bool(m.position_embedding),
        **resolve_kernels(m, on))

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @property
  def super_res(self) -> bool:
    """Whether this is an upsampler: it also takes a low-resolution image, upsampled to image_size."""
    return self.low_res_size > 0

  @property
  def unet_in_channels(self) -> int:
    """x_t (C), plus for an inpainting model the known image times the mask and the mask (C + 1), plus for
    an upsampler the upsampled low-resolution image (C): glide-text2im's C, 2·C + 1, 2·C and 3·C + 1."""
    return self.in_channels * (1 + self.inpaint + self.super_res) + self.inpaint

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
