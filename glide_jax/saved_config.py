"""The config a checkpoint saves beside its arrays: its JSON round trip, and what differs from the config now.

A resumed run must be the same model (`check_same_model`: a UserError naming the fields otherwise) and is
told when its training recipe changed (`recipe_differences`); compute settings (dtype, kernels) may differ.
"""

from __future__ import annotations

import json
from typing import Optional

import ml_collections

from glide_jax.errors import UserError
from glide_jax.model.model_config import COMPUTE_FIELDS


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def config_from_json(saved: dict, defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`defaults` with every field a saved config sets (JSON lists as tuples); fields the saved config lacks
  keep their defaults, and fields it has that no longer exist are dropped."""
  config = defaults.copy_and_resolve_references()

  def update(target: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in target:
        continue
      if isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, dict):
        update(target[key], value)
      else:
        target[key] = tuple(value) if isinstance(value, list) else value

  with config.unlocked():
    update(config, saved)
  return config


# Sections of the config that determine the shapes and meaning of the saved parameters; the model's
# compute fields (dtype, kernels) do not, so a run trained in bfloat16 on a GPU samples in float32 on a CPU.
MODEL_FIELDS = ("model", "diffusion", "data.image_size", "data.channels")
COMPUTE_ONLY_FIELDS = tuple(f"model.{name}" for name in COMPUTE_FIELDS)
# Model fields added after checkpoints were first written, with the value an older checkpoint meant.
ADDED_FIELD_DEFAULTS = {"model.inpaint": False, "model.low_res_size": 0, "model.position_embedding": False,
                        "model.xf_causal": False, "model.xf_embedding_skip": False,
                        "diffusion.snr_scale": 1.0}
# The fields that set a run's course besides the model: the loss, the optimiser and its schedule, the data's
# batch and the randomness. (num_steps is left out: raising it is how a finished run trains further.)
RECIPE_FIELDS = ("seed", "train.batch_size", "train.learning_rate", "train.warmup_steps", "train.lr_schedule",
                 "train.lr_end_factor", "train.adam_b1", "train.adam_b2", "train.grad_clip", "train.ema_decay",
                 "train.p_uncond", "train.min_snr_gamma", "train.edit_composites", "train.text_encoder_lr_scale")
ADDED_RECIPE_DEFAULTS = {"train.lr_schedule": "constant", "train.lr_end_factor": 0.0, "train.min_snr_gamma": 0.0,
                         "train.edit_composites": 0.0, "train.text_encoder_lr_scale": 1.0}


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def _differences(saved: dict, current: ml_collections.ConfigDict, fields: tuple[str, ...],
                 excluded: tuple[str, ...] = (), added: Optional[dict] = None) -> list[str]:
  """'field: saved → current' for every field under `fields` (not in `excluded`) whose values differ."""
  saved_flat, current_flat = {**(added or {}), **_flatten(saved)}, _flatten(config_to_json(current))
  keys = sorted(k for k in set(saved_flat) | set(current_flat)
                if any(k == f or k.startswith(f + ".") for f in fields) and k not in excluded)
  missing = object()
  return [f"{k}: {saved_flat.get(k, missing)!r} in the checkpoint, {current_flat.get(k, missing)!r} now"
          .replace(repr(missing), "(absent)")
          for k in keys if saved_flat.get(k, missing) != current_flat.get(k, missing)]


def differences(saved: dict, current: ml_collections.ConfigDict, fields: tuple[str, ...]) -> list[str]:
  """'field: saved → current' for every field under `fields` whose values differ."""
  return _differences(saved, current, fields)


def model_config_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """'field: saved → current' for every model-defining field that differs."""
  return _differences(saved, current, MODEL_FIELDS, COMPUTE_ONLY_FIELDS, ADDED_FIELD_DEFAULTS)


def recipe_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """'field: saved → current' for every training-recipe field that differs: resuming with them changes the
  run's course (a config file's new defaults do so silently), which may be meant (a lower learning rate after
  a divergence) or not."""
  return _differences(saved, current, RECIPE_FIELDS, added=ADDED_RECIPE_DEFAULTS)


def check_same_model(saved: dict, current: ml_collections.ConfigDict, directory: str) -> None:
  """A UserError listing the differing fields when a checkpoint came from another model config."""
  diffs = model_config_differences(saved, current)
  if diffs:
    raise UserError(
        f"The checkpoint in {directory} was trained with a different model config: " + "; ".join(diffs)
        + ". Use the same --config and overrides as that run, or a new --workdir for the new model.")
