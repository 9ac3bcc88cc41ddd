"""Converts one of OpenAI's released GLIDE checkpoints into a glide-jax workdir:

  python -m glide_jax.convert --model=base --checkpoint=base.pt --workdir=glide/base

`--mode=sample` and `--mode=edit` then use the workdir like any trained run, with the matching config
(configs/glide_base.py, configs/glide_upsample.py; ":inpaint" for the inpainting models). The file is read
without running code from it (glide_jax.released.state_dict_file); every key and shape is checked.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import jax
import ml_collections
import numpy as np

from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.released.keymap import convert_state_dict
from glide_jax.released.options import RELEASED_MODELS, apply_glide_options, glide_config
from glide_jax.released.state_dict_file import read_state_dict


def convert_checkpoint(config: ml_collections.ConfigDict, state_dict: dict[str, np.ndarray], workdir: str) -> int:
  """Writes a state dict's parameters as step 0 of `workdir` (parameters and EMA alike) for `config`'s
  model; returns the number of parameters. A workdir that already holds checkpoints is left alone."""
  exp = Experiment(config, workdir)
  params = convert_state_dict(state_dict, exp.abstract_state.params)
  exp.write_params(params, step=0)
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def config_for(model: str, options: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The released model's config, or the model options a file records (an .npz such as the reference
  goldens) when it has them."""
  config = glide_config(model)
  if options is not None:
    apply_glide_options(config, options)
  return config


def main(argv: list[str]) -> None:
  del argv
  from absl import flags

  from glide_jax.runtime import use_all_cpu_cores
  use_all_cpu_cores()
  f = flags.FLAGS
  try:
    state_dict, options = read_state_dict(f.checkpoint)
    count = convert_checkpoint(config_for(f.model, options), state_dict, f.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  name = "glide_upsample" if f.model.startswith("upsample") else "glide_base"
  suffix = ":inpaint" if f.model.endswith("-inpaint") else ""
  print(f"Converted {f.checkpoint} ({count:,} parameters) into {os.path.abspath(f.workdir)}. Sample with:\n"
        f"  python main.py --config=configs/{name}.py{suffix} --workdir={f.workdir} --mode=sample", flush=True)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_enum("model", None, list(RELEASED_MODELS), "Which released GLIDE model the checkpoint is.")
  flags.DEFINE_string("checkpoint", None, "The downloaded .pt file (or an .npz of its arrays).")
  flags.DEFINE_string("workdir", None, "A new directory to write the converted model into.")
  flags.mark_flags_as_required(["model", "checkpoint", "workdir"])
  app.run(main)
