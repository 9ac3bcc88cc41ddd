"""Moves a run's EMA parameters to another machine as one small .npz, and into a workdir there.

A training checkpoint holds the parameters, their EMA and Adam's two moments: four times what sampling and
evaluation read. `export` writes the latest checkpoint's EMA parameters, its step and the config the run saved;
`import` writes them as that step of a new workdir (the parameters alone, as a converted model is written),
which --mode=sample and --mode=eval read as they read the original. docs/quality.md used it to evaluate CPU runs on a
lent GPU whose transfer limit their full checkpoints exceeded.

  python scripts/carry_params.py export --workdir=runs/final/seed0 --npz=seed0.npz
  python scripts/carry_params.py import --npz=seed0.npz --workdir=DIR
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glide_jax.runtime import use_all_cpu_cores  # noqa: E402  (before JAX is imported)

use_all_cpu_cores()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from glide_jax.config import default_config  # noqa: E402
from glide_jax.errors import UserError, report_errors  # noqa: E402
from glide_jax.experiment import Experiment  # noqa: E402
from glide_jax.saved_config import config_from_json  # noqa: E402

STEP_KEY, CONFIG_KEY = "__step__", "__config__"


def export_params(workdir: str, path: str) -> int:
  """Writes `workdir`'s latest EMA parameters, step and saved config to `path`; returns the step."""
  if not path.endswith(".npz") or os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
    raise UserError(f"--npz={path}: give the path of a new .npz file in an existing directory (nothing was "
                    f"written).")
  exp = Experiment.from_workdir(workdir)
  params, step = exp.load_params(use_ema=True)
  with exp.checkpointer(read_only=True) as checkpointer:
    saved = checkpointer.saved_config()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  arrays = {jax.tree_util.keystr(key): np.asarray(leaf) for key, leaf in leaves}
  np.savez(path, **{STEP_KEY: np.int64(step), CONFIG_KEY: np.asarray(json.dumps(saved))}, **arrays)
  return step


def import_params(path: str, workdir: str) -> int:
  """Writes the parameters in `path` as their step of the new `workdir`; returns the step."""
  if not os.path.isfile(path):
    raise UserError(f"--npz={path} does not exist; give a file written by `carry_params.py export`.")
  try:
    with np.load(path, allow_pickle=False) as f:
      files = {k: f[k] for k in f.files}
  except Exception as e:  # Not a zip, a damaged one, or object arrays (which would need pickle).
    raise UserError(f"--npz={path} is not a readable .npz of arrays ({type(e).__name__}: {e}); give a file "
                    f"written by `carry_params.py export`.") from None
  if STEP_KEY not in files or CONFIG_KEY not in files:
    raise UserError(f"--npz={path} was not written by `carry_params.py export`: it has no {STEP_KEY} and "
                    f"{CONFIG_KEY} entries (nothing was written).")
  step = int(files.pop(STEP_KEY))
  exp = Experiment(config_from_json(json.loads(str(files.pop(CONFIG_KEY))), default_config()), workdir)
  paths, treedef = jax.tree_util.tree_flatten_with_path(exp.abstract_params)
  names = [jax.tree_util.keystr(key) for key, _ in paths]
  if sorted(names) != sorted(files):
    raise UserError(f"{path} does not hold this model's parameters: {len(set(names) ^ set(files))} names differ.")
  params = jax.tree_util.tree_unflatten(treedef, [files[n] for n in names])
  exp.write_params(params, step)
  return step


def main(argv: list[str]) -> None:
  FLAGS = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("export", "import"):
    raise app.UsageError("Say export or import.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save and a restore at INFO.
  if argv[1] == "export":
    step = report_errors(export_params, FLAGS.workdir, FLAGS.npz)
  else:
    step = report_errors(import_params, FLAGS.npz, FLAGS.workdir)
  print(f"{argv[1]}ed step {step}: {FLAGS.workdir} {'->' if argv[1] == 'export' else '<-'} {FLAGS.npz}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The run to export, or the new workdir to import into.", required=True)
  flags.DEFINE_string("npz", None, "The parameters file.", required=True)
  app.run(main)
