"""glide-text2im noised-CLIP state-dict keys and layouts → `glide_jax.clip.model`'s Flax parameters, checked.

The released `clip/image-enc` and `clip/text-enc` checkpoints are the state dicts of the reference
`ImageEncoder` and `TextEncoder` (glide-text2im `clip/encoders.py`). Names map by dropping `blocks.` and
renaming leaves (`flax_path`); layouts change as follows: the patch conv `patch_proj` OIHW → HWIO, `Affine`
weights `w` [out, in] (applied as F.linear) → Dense kernels [in, out], LayerNorm `g`/`b` → `scale`/`bias`
as they are, the embedding tables `w_t`, `w_pos`, `w_voc` as they are. Attention channels are head-major in
both, so no permutation is needed. Every source tensor must be used and every Flax parameter filled, with
matching shapes; anything else is a UserError naming the key. The logit scale is not a tensor: it is
`ClipConfig.logit_scale`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from glide_jax.clip.model import ClipConfig, init_clip_params
from glide_jax.errors import UserError
from glide_jax.released import keymap as released_keymap
from glide_jax.released.keymap import StateDictLayout

# Modules that hold a LayerNorm `ln`, and the Affine layers (f_k and the output f have no bias).
_LN_OWNERS = r"input|output|block_\d+\.f_attn|block_\d+\.f_mlp"
_AFFINES = r"block_\d+\.f_attn\.f_[qkvc]|block_\d+\.f_mlp\.f_[12]|output\.f"
# (pattern on the PyTorch key, replacement giving the Flax path with "." or "/" separators)
_RULES = [
    (r"^blocks\.input\.(w_t|w_pos|w_voc)$", r"input/\1"),
    (r"^blocks\.input\.patch_proj$", r"input/patch_proj/kernel"),
    (rf"^blocks\.({_LN_OWNERS})\.ln\.g$", r"\1/ln/scale"),
    (rf"^blocks\.({_LN_OWNERS})\.ln\.b$", r"\1/ln/bias"),
    (rf"^blocks\.({_AFFINES})\.w$", r"\1/kernel"),
    (rf"^blocks\.({_AFFINES})\.b$", r"\1/bias"),
]
ENCODERS = ("image_enc", "text_enc")  # The parameter tree's top level, as in the goldens and released names.


def flax_path(torch_key: str) -> tuple[str, ...]:
  """The Flax parameter path (inside one encoder) of a noised-CLIP state-dict key (a UserError if unknown)."""
  for pattern, replacement in _RULES:
    if re.match(pattern, torch_key):
      return tuple(re.sub(pattern, replacement, torch_key).replace(".", "/").split("/"))
  raise UserError(f"State-dict key {torch_key!r} is not part of a glide-text2im noised CLIP encoder.")


def to_flax_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax parameter at `path`."""
  if path[-1] != "kernel":
    return value
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def encoder_layout(what: str = "this encoder") -> StateDictLayout:
  """The noised CLIP encoders' state-dict layout, for the shared checks of glide_jax.released.keymap."""
  return StateDictLayout(
      flax_path, to_flax_layout, what,
      no_place_fix="check that the checkpoint is the right encoder and the CLIP config matches it.",
      shape_fix="check the CLIP config against the checkpoint.",
      missing_fix="check that the checkpoint is the right encoder.")


def match_keys(source_shapes: Mapping[str, tuple[int, ...]], target: Any,
               what: str = "this encoder") -> dict[str, tuple[str, ...]]:
  """The Flax path of every key of one encoder's state dict, checked against `target` (its parameters)."""
  return released_keymap.match_keys(source_shapes, target, encoder_layout(what))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Any, what: str = "this encoder") -> Any:
  """Flax parameters shaped like `target` (one encoder's) from that encoder's glide-text2im state dict."""
  return released_keymap.convert_state_dict(state_dict, target, encoder_layout(what))


def clip_param_shapes(config: ClipConfig) -> dict[str, Any]:
  """{"image_enc": …, "text_enc": …} shape-dtype structs of the parameters (traced, nothing computed)."""
  return jax.eval_shape(lambda rng: init_clip_params(config, rng), jax.random.key(0))


def convert_clip(config: ClipConfig, image_state_dict: Mapping[str, np.ndarray],
                 text_state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The parameters {"image_enc": …, "text_enc": …} of the two released encoders' state dicts."""
  shapes = clip_param_shapes(config)
  return {"image_enc": convert_state_dict(image_state_dict, shapes["image_enc"], "the image encoder"),
          "text_enc": convert_state_dict(text_state_dict, shapes["text_enc"], "the text encoder")}
