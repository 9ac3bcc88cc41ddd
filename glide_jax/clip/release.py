"""OpenAI's released noised CLIP (glide-text2im `clip/image-enc`, `clip/text-enc`) as a glide-jax CLIP run.

The two encoders are two checkpoint files; a file may also hold both under "image_enc/" and "text_enc/"
(the reference goldens' .npz). Which encoder a file holds is read from its keys, so their order on the command
line does not matter. The sizes are the release's `config.yaml` (`ClipConfig`'s defaults) unless the file
records its own config (the goldens do).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from glide_jax.clip.experiment import CLIP_SECTION_FIELDS
from glide_jax.clip.model import ClipConfig
from glide_jax.config import default_config
from glide_jax.errors import UserError
from glide_jax.released.state_dict_file import read_state_dict

ENCODER_KEYS = {"image_enc": "blocks.input.patch_proj", "text_enc": "blocks.input.w_voc"}  # A key only it has.


def clip_run_config(clip: ClipConfig) -> ml_collections.ConfigDict:
  """The glide-jax config of a CLIP run with `clip`'s sizes: its images (data) and noise (diffusion) too."""
  config = default_config()
  config.data.name = ""  # No dataset: a released CLIP guides sampling; it is not trained here.
  config.data.image_size, config.data.channels = clip.image_size, clip.image_channels
  config.diffusion.num_timesteps, config.diffusion.noise_schedule = clip.n_timesteps, clip.beta_schedule
  for field in CLIP_SECTION_FIELDS:
    config.clip[field] = getattr(clip, field)
  config.clip.logit_scale = float(clip.logit_scale)
  return config


def _encoders_in(path: str, state_dict: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """{"image_enc" and/or "text_enc": its state dict} of one file."""
  prefixed = {name: {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(name + "/")}
              for name in ENCODER_KEYS}
  if any(prefixed.values()):
    stray = sorted(k for k in state_dict if not k.startswith(tuple(n + "/" for n in ENCODER_KEYS)))
    if stray:
      raise UserError(f"--checkpoint {path} holds keys outside image_enc/ and text_enc/, e.g. {stray[:3]}; it is not "
                      f"a noised CLIP.")
    return {name: sd for name, sd in prefixed.items() if sd}
  held = [name for name, key in ENCODER_KEYS.items() if key in state_dict]
  if len(held) != 1:
    raise UserError(f"--checkpoint {path} is not one of glide-text2im's noised CLIP encoders (it has "
                    f"{'both' if held else 'neither'} of {sorted(ENCODER_KEYS.values())}); give the clip/image-enc and "
                    f"clip/text-enc checkpoints.")
  return {held[0]: dict(state_dict)}


def read_clip_checkpoints(paths: Sequence[str]) -> tuple[ClipConfig, dict[str, dict[str, np.ndarray]]]:
  """(the CLIP's sizes, {"image_enc": state dict, "text_enc": state dict}) from one or two files, read
  without running code from them; each encoder exactly once."""
  encoders: dict[str, dict[str, np.ndarray]] = {}
  where: dict[str, str] = {}
  recorded: Optional[Mapping[str, Any]] = None
  for path in paths:
    state_dict, options = read_state_dict(path)
    if options is not None and "config" in options:
      if recorded is not None and options["config"] != recorded:
        raise UserError(f"--checkpoint's files record different CLIP configs ({path} differs from the first); give "
                        f"the two encoders of one CLIP.")
      recorded = options["config"]
    for name, sd in _encoders_in(path, state_dict).items():
      if name in encoders:
        raise UserError(f"--checkpoint names two {name.replace('_enc', '')} encoders ({where[name]} and {path}); give "
                        f"one image encoder and one text encoder.")
      encoders[name], where[name] = sd, path
  missing = [name for name in ENCODER_KEYS if name not in encoders]
  if missing:
    raise UserError(f"--checkpoint lacks the {' and '.join(n.replace('_enc', '') for n in missing)} encoder; give "
                    f"both files, comma-separated: --checkpoint=clip_image_enc.pt,clip_text_enc.pt.")
  return (ClipConfig() if recorded is None else ClipConfig.from_reference(recorded)), encoders
