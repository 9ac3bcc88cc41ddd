"""Random streams derived from the config's seed, one per purpose, so no two purposes ever draw the same bits.

Each stream is fold_in(key(seed), tag) with its own tag; within a stream, draws are folded in again by
step or batch index (training step k uses fold_in(stream_key(seed, "train"), k)). The tags of "init" and
"train" are the ones training has always used, so runs and checkpoints made before the streams had names
continue bit for bit.
"""

from __future__ import annotations

import jax

STREAM_TAGS = {
    "init": 0,        # The model's initial parameters.
    "train": 1,       # Per-step timesteps, noise, prompt dropout and network dropout (folded with the step).
    "sample": 2,      # --mode=sample and the sample grids written during training (folded with the batch).
    "eval": 3,        # --mode=eval's samples (folded with the batch; the same key at every guidance scale).
    "classifier": 4,  # The evaluation classifier's initial parameters and augmentation.
    "edit": 5,        # --mode=edit's samples (folded with the batch).
    "zero_shot": 6,   # The noise of a CLIP run's zero-shot report (folded with the batch).
}


def stream_key(seed: int, stream: str) -> jax.Array:
  """The key of one named stream of `seed`."""
  if stream not in STREAM_TAGS:
    raise ValueError(f"Unknown random stream {stream!r}; the streams are {sorted(STREAM_TAGS)}.")
  return jax.random.fold_in(jax.random.key(seed), STREAM_TAGS[stream])
