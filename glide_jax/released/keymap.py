"""glide-text2im state-dict keys and layouts → this project's Flax parameter tree, checked.

PyTorch names map to Flax paths by a few rules (`flax_path`); layouts change as follows: Conv2d weights
OIHW → HWIO, Linear weights [out, in] → [in, out], the attention blocks' 1x1 Conv1d weights [out, in, 1]
→ [in, out], GroupNorm and LayerNorm `weight` → `scale`, the token embedding as it is. The per-head order
of qkv and encoder_kv channels is glide-text2im's (head-major, then q|k|v) in both, so no permutation is
needed. Every source tensor must be used and every Flax parameter filled, with matching shapes; anything
else is a UserError naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import flax.traverse_util
import numpy as np

from glide_jax.errors import UserError

# (pattern on the PyTorch key, replacement giving the Flax path with "/" separators)
_RULES = [
    (r"^time_embed\.(\d)\.(weight|bias)$", r"unet/time_embed_\1/\2"),
    (r"^input_blocks\.0\.0\.(weight|bias)$", r"unet/input_blocks_0/\1"),
    (r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$", r"unet/\1_\2_\3/\4"),
    (r"^middle_block\.(\d+)\.(.+)$", r"unet/middle_block_\1/\2"),
    (r"^out\.0\.(weight|bias)$", r"unet/out_norm/norm/\1"),
    (r"^out\.2\.(weight|bias)$", r"unet/out_conv/\1"),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.(c_fc|c_proj)\.(weight|bias)$", r"text_encoder/resblocks_\1/\2/\3"),
    (r"^transformer\.resblocks\.(\d+)\.(.+)$", r"text_encoder/resblocks_\1/\2"),
    (r"^(final_ln|transformer_proj|token_embedding)\.(weight|bias)$", r"text_encoder/\1/\2"),
    (r"^(positional_embedding|padding_embedding)$", r"text_encoder/\1"),
]
# Inside a ResBlock or an AttentionBlock: PyTorch's Sequential indices → this project's layer names.
_BLOCK_LAYERS = {
    "in_layers/0": "in_norm/norm", "in_layers/2": "in_conv", "emb_layers/1": "emb_layers",
    "out_layers/0": "out_norm/norm", "out_layers/3": "out_conv", "norm": "norm/norm",
}
_BLOCK_LAYER_PATTERN = re.compile(r"(?<=/)(" + "|".join(re.escape(k) for k in _BLOCK_LAYERS) + r")(?=/)")


def flax_path(torch_key: str) -> tuple[str, ...]:
  """The Flax parameter path of a glide-text2im state-dict key (a UserError for an unknown key)."""
  for pattern, replacement in _RULES:
    if re.match(pattern, torch_key):
      path = re.sub(pattern, replacement, torch_key).replace(".", "/")
      break
  else:
    raise UserError(f"State-dict key {torch_key!r} is not part of a GLIDE text-to-image model this converter knows.")
  if re.match(r"unet/(input_blocks|output_blocks|middle_block)_", path):
    path = _BLOCK_LAYER_PATTERN.sub(lambda m: _BLOCK_LAYERS[m.group(0)], path)  # One pass: no renaming twice.
  parts = path.split("/")
  leaf = parts[-1]
  if leaf == "weight":
    parent = parts[-2]
    is_norm = parent in ("norm", "final_ln") or parent.startswith("ln_")
    parts[-1] = "scale" if is_norm else ("embedding" if parent == "token_embedding" else "kernel")
  return tuple(parts)


def to_flax_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax parameter at `path`."""
  if path[-1] != "kernel":
    return value
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:
    return value[..., 0].T
  return value.T


@dataclasses.dataclass(frozen=True)
class StateDictLayout:
  """How one kind of PyTorch state dict maps onto a Flax parameter tree (names, then layouts), and what its
  errors call the model and advise. GLIDE's diffusion models are `GLIDE_LAYOUT`; the noised CLIP encoders
  have their own (glide_jax.clip.keymap)."""

  flax_path: Callable[[str], tuple[str, ...]]
  to_flax_layout: Callable[[tuple[str, ...], np.ndarray], np.ndarray]
  what: str  # "this model", "the image encoder", ...
  no_place_fix: str
  shape_fix: str
  missing_fix: str

  def flax_shape(self, path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a PyTorch tensor of `shape` has in the layout of the Flax parameter at `path`."""
    return self.to_flax_layout(path, np.broadcast_to(np.float32(0), shape)).shape


GLIDE_LAYOUT = StateDictLayout(
    flax_path, to_flax_layout, "this model",
    no_place_fix="check that the config matches the checkpoint's model type and options.",
    shape_fix="check the config's model options against the checkpoint's.",
    missing_fix="check the model type (base, upsample, base-inpaint, upsample-inpaint).")


def match_keys(source_shapes: Mapping[str, tuple[int, ...]], target: Any,
               layout: StateDictLayout = GLIDE_LAYOUT) -> dict[str, tuple[str, ...]]:
  """The Flax path of every state-dict key, checked: each key has a place in `target` (arrays or
  shape-dtype structs) with the same shape, no two keys share one, and every parameter gets one."""
  flat_target = flax.traverse_util.flatten_dict(target)
  paths: dict[str, tuple[str, ...]] = {}
  sources: dict[tuple[str, ...], str] = {}
  what = layout.what
  for key, shape in source_shapes.items():
    path = layout.flax_path(key)
    if path in sources:
      raise UserError(f"State-dict keys {sources[path]!r} and {key!r} both map to {'/'.join(path)}.")
    sources[path] = key
    if path not in flat_target:
      raise UserError(f"State-dict key {key!r} (as {'/'.join(path)}) has no place in {what}; {layout.no_place_fix}")
    expected, shape = tuple(flat_target[path].shape), tuple(shape)
    if layout.flax_shape(path, shape) != expected:
      raise UserError(f"State-dict key {key!r} has shape {shape} (as {'/'.join(path)}: "
                      f"{layout.flax_shape(path, shape)}), but {what}'s parameter is {expected}; {layout.shape_fix}")
    paths[key] = path
  missing = sorted("/".join(p) for p in set(flat_target) - set(sources))
  if missing:
    raise UserError(f"The state dict lacks {len(missing)} of {what}'s parameters, e.g. {missing[:3]}; "
                    f"{layout.missing_fix}")
  return paths


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Any,
                       layout: StateDictLayout = GLIDE_LAYOUT) -> Any:
  """Flax parameters shaped like `target` (arrays or shape-dtype structs) from a state dict of `layout`'s kind."""
  paths = match_keys({k: np.shape(v) for k, v in state_dict.items()}, target, layout)
  return flax.traverse_util.unflatten_dict(
      {paths[k]: layout.to_flax_layout(paths[k], np.asarray(v, np.float32)) for k, v in state_dict.items()})
