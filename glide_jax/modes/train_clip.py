"""--mode=train_clip: a noised CLIP for CLIP guidance (GLIDE §2.4), trained on the config's data and noise.

  python main.py --config=configs/mnist_clip_cpu.py --workdir=runs/mnist_clip --mode=train_clip

Checkpointed, resumable and stopped cleanly like the diffusion run (the same loop, glide_jax.modes.train).
When the run reaches config.train.num_steps on a class dataset, its zero-shot accuracy on data.test_split at
t = 0, T/4, T/2, 3T/4 is printed and written to WORKDIR/zero_shot.json. Sample with it through
--config.sample.guidance=clip --config.sample.clip_workdir=WORKDIR.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Optional

import jax
import ml_collections

from glide_jax import data as data_lib
from glide_jax import sharding as sharding_lib
from glide_jax.clip.experiment import ClipExperiment
from glide_jax.clip.zero_shot import class_text_embeddings, zero_shot_accuracy, zero_shot_timesteps
from glide_jax.modes.train import train
from glide_jax.rng import stream_key


def run(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[int, float]]:
  """Trains (or resumes) the CLIP run in `workdir`; returns its zero-shot accuracies once it has finished."""
  exp = ClipExperiment(config, workdir)
  exp.check_trainable()
  state = train(exp)
  if int(jax.device_get(state.step)) < config.train.num_steps or data_lib.is_captioned(config.data):
    return None
  for stop in (signal.SIGTERM, signal.SIGINT):  # Training's guard has handed the signals back.
    signal.signal(stop, _stopped_during_report)
  return write_zero_shot(exp, state.ema_params)


def _stopped_during_report(signum, frame):
  print(f"\nStopped by {signal.Signals(signum).name} during the zero-shot report, after training finished: the "
        f"checkpoints are saved. Rerun the same command to write zero_shot.json.", file=sys.stderr, flush=True)
  os._exit(128 + signum)


def write_zero_shot(exp: ClipExperiment, params) -> dict[int, float]:
  """Zero-shot accuracy of `params` on the test split at the report's timesteps, printed and saved as JSON.
  Every process computes it on its own first device from a host copy of the parameters (they may be split
  over processes); process 0 writes it."""
  c = exp.config
  params = jax.tree_util.tree_map(sharding_lib.to_host, params)
  test = data_lib.load_dataset(c.data, c.data.test_split)
  prompts = [p for row in data_lib.prompt_table(test.class_names, c.data.prompt_templates) for p in row]
  tokens, text_len = exp.tokenize(prompts)
  with jax.default_device(jax.local_devices()[0]):
    classes = class_text_embeddings(exp.clip_config, params, tokens, text_len, len(test.class_names))
    accuracy = zero_shot_accuracy(exp.clip_config, params, exp.diffusion, test, classes,
                                  zero_shot_timesteps(c.diffusion.num_timesteps), stream_key(c.seed, "zero_shot"))
  if jax.process_index() == 0:
    path = os.path.join(exp.workdir, "zero_shot.json")
    with open(path, "w") as f:
      json.dump({"split": c.data.test_split, "images": len(test), "prompts_per_class": len(c.data.prompt_templates),
                 "accuracy_by_timestep": {str(t): a for t, a in accuracy.items()}}, f, indent=2)
    cells = ", ".join(f"t={t}: {a:.3f}" for t, a in accuracy.items())
    print(f"Zero-shot accuracy on {c.data.test_split} ({len(test)} images, EMA parameters): {cells}. Wrote {path}.",
          flush=True)
  return accuracy
