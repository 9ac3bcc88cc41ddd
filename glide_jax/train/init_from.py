"""Starting a run from another run's parameters, as GLIDE fine-tuned its inpainting model from the base
model: every tensor is copied, and an input convolution that now takes more channels keeps the base
weights for the old ones and starts the new ones at zero, so the new model first computes what the base
model computes."""

from __future__ import annotations

from typing import Any

import flax.traverse_util
import jax.numpy as jnp

from glide_jax.errors import UserError

# The UNet's first convolution: [3, 3, in_channels, width]; the inpainting model's takes 2·C + 1 channels.
INPUT_CONV_KERNEL = ("unet", "input_blocks_0", "kernel")


def _names(keys) -> str:
  keys = sorted("/".join(k) for k in keys)
  return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def transfer_params(base: Any, target: Any) -> Any:
  """`target`'s tree (arrays or shape-dtype structs) filled from `base`'s tensors of the same names.

  Shapes must match, except the input convolution's kernel, which may gain input channels (zeros). Any
  tensor that one tree has and the other lacks, or any other change of shape, is a UserError naming it.
  """
  flat_base = flax.traverse_util.flatten_dict(base)
  flat_target = flax.traverse_util.flatten_dict(target)
  missing, extra = set(flat_target) - set(flat_base), set(flat_base) - set(flat_target)
  if missing or extra:
    raise UserError(f"config.train.init_from: the base run's model has other layers than this one "
                    f"(only here: {_names(missing) or 'none'}; only there: {_names(extra) or 'none'}). Give both "
                    f"runs the same model settings apart from model.inpaint.")
  out = {}
  for key, spec in flat_target.items():
    value = flat_base[key]
    if value.shape == spec.shape:
      out[key] = value.astype(spec.dtype)
    elif (key == INPUT_CONV_KERNEL and value.ndim == 4 and value.shape[:2] == spec.shape[:2]
          and value.shape[3] == spec.shape[3] and value.shape[2] < spec.shape[2]):
      out[key] = jnp.zeros(spec.shape, spec.dtype).at[:, :, :value.shape[2], :].set(value)
    else:
      raise UserError(f"config.train.init_from: {'/'.join(key)} has shape {tuple(value.shape)} in the base run "
                      f"and {tuple(spec.shape)} here. Give both runs the same model settings apart from "
                      f"model.inpaint.")
  return flax.traverse_util.unflatten_dict(out)


def new_input_channels(base: Any, target: Any) -> int:
  """How many input channels `target`'s first convolution has that `base`'s lacks."""
  get = lambda tree: flax.traverse_util.flatten_dict(tree)[INPUT_CONV_KERNEL].shape[2]  # noqa: E731
  return get(target) - get(base)
