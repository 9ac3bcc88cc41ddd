"""--mode=convert: one of OpenAI's released GLIDE checkpoints into a glide-jax workdir:

  python main.py --mode=convert --model=base --checkpoint=base.pt --workdir=glide/base

`--mode=sample` and `--mode=edit` then use the workdir like any trained run, with the matching config
(configs/glide_base.py, configs/glide_upsample.py; ":inpaint" for the inpainting models). The file is read
without running code from it (glide_jax.released.state_dict_file); every key and shape is checked.

The noised CLIP's two encoders become one CLIP run, which CLIP guidance reads (sample.clip_workdir):

  python main.py --mode=convert --model=clip --checkpoint=clip_image_enc.pt,clip_text_enc.pt --workdir=glide/clip
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from glide_jax.clip.experiment import ClipExperiment
from glide_jax.clip.keymap import convert_clip
from glide_jax.clip.release import clip_run_config, read_clip_checkpoints
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.released.keymap import convert_state_dict
from glide_jax.released.options import apply_glide_options, glide_config, model_in_file
from glide_jax.released.state_dict_file import read_state_dict


def convert_checkpoint(config: ml_collections.ConfigDict, state_dict: dict[str, np.ndarray], workdir: str) -> int:
  """Writes a state dict's parameters as step 0 of `workdir` (parameters and EMA alike) for `config`'s
  model; returns the number of parameters. A workdir that already holds checkpoints is left alone."""
  exp = Experiment(config, workdir)
  params = convert_state_dict(state_dict, exp.abstract_params)
  exp.write_params(params, step=0)
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def config_for(model: str, options: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The released model's config, or the model options a file records (an .npz such as the reference
  goldens) when it has them."""
  config = glide_config(model)
  if options is not None:
    apply_glide_options(config, options)
  return config


def run(config: None, workdir: str, model: str, checkpoint: str) -> int:
  """Converts `checkpoint`, one of OpenAI's released `model`s, into `workdir`; returns the parameter count.
  (`config` is None: the released model names its own.)"""
  del config
  if model == "clip":
    return convert_clip_run(workdir, [p.strip() for p in checkpoint.split(",") if p.strip()])
  state_dict, options = read_state_dict(checkpoint)
  held = model_in_file(state_dict, options)
  if held is not None and held[0] != model:
    raise UserError(f"--checkpoint {checkpoint} holds GLIDE's {held[0]!r} model ({held[1]}), not --model={model}; "
                    f"give --model={held[0]} (nothing was written).")
  count = convert_checkpoint(config_for(model, options), state_dict, workdir)
  name = "glide_upsample" if model.startswith("upsample") else "glide_base"
  suffix = ":inpaint" if model.endswith("-inpaint") else ""
  print(f"Converted {checkpoint} ({count:,} parameters) into {os.path.abspath(workdir)}. Sample with:\n"
        f"  python main.py --config=configs/{name}.py{suffix} --workdir={workdir} --mode=sample", flush=True)
  return count


def convert_clip_run(workdir: str, paths: list[str]) -> int:
  """The noised CLIP's encoders (one or two files) as step 0 of a new CLIP run in `workdir`; returns the
  parameter count."""
  clip_config, encoders = read_clip_checkpoints(paths)
  exp = ClipExperiment(clip_run_config(clip_config), workdir)
  params = convert_clip(clip_config, encoders["image_enc"], encoders["text_enc"])
  exp.write_params(params, step=0)
  count = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
  print(f"Converted {' and '.join(paths)} ({count:,} parameters) into {os.path.abspath(workdir)}. Guide the base "
        f"model with it (as glide-text2im's clip_guided notebook):\n"
        f"  python main.py --config=configs/glide_base.py --workdir=glide/base --mode=sample "
        f"--config.sample.guidance=clip --config.sample.clip_workdir={workdir}", flush=True)
  return count
