"""Sampling any number of (prompt, guidance scale) rows with one compiled sampler, in device-sized batches."""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

from glide_jax import sharding as sharding_lib
from glide_jax.sampling import images as images_lib
from glide_jax.sampling.guided import GuidedSampler


def progress_bar(total: int, desc: str):
  """A progress bar over `total` images, shown by process 0: its rate and time left are the estimate that a
  long sampling run (an evaluation on a CPU, say) shows from its first batch on."""
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=jax.process_index() != 0)


def sample_in_batches(sampler: GuidedSampler, tokens: np.ndarray, mask: np.ndarray,
                      scales: np.ndarray, rng: jax.Array, batch_size: int, num_devices: int,
                      images: Optional[np.ndarray] = None, known: Optional[np.ndarray] = None,
                      low_res: Optional[np.ndarray] = None, progress: Any = None) -> np.ndarray:
  """Images [N, H, W, C] in [−1, 1] for N rows from a bound sampler, in batches padded to a multiple of the
  device count; with `images` and `known` ([N, H, W, C] and [N, H, W, 1]), edits of those images; an
  upsampler enlarges `low_res` [N, h, w, C]. A `progress` bar (progress_bar) advances by each batch's rows.

  Batch i draws from fold_in(rng, i), so the result depends on batch_size but not on the device count.
  """
  step = max(num_devices, batch_size // num_devices * num_devices)
  extra = {k: v for k, v in (("image", images), ("known", known), ("low_res", low_res)) if v is not None}
  outputs = []
  for i, start in enumerate(range(0, len(tokens), step)):
    sl = slice(start, start + step)
    n = len(tokens[sl])
    pad = (-n) % num_devices
    padded = lambda a: np.concatenate([a[sl], np.repeat(a[sl][-1:], pad, axis=0)])  # noqa: E731
    x = sampler(padded(tokens), padded(mask), padded(scales), jax.random.fold_in(rng, i),
                **{k: padded(v) for k, v in extra.items()})
    outputs.append(sharding_lib.to_host(x)[:n])
    if progress is not None:
      progress.update(n)
  return np.concatenate(outputs)


def sample_grid(sampler: GuidedSampler, tokens: np.ndarray, mask: np.ndarray, scales: np.ndarray,
                num_per_prompt: int, rng: jax.Array, batch_size: int, num_devices: int,
                progress: Any = None) -> np.ndarray:
  """uint8 samples [P, S, K, H, W, C] for P tokenized prompts [P, L], S guidance scales and K repeats."""
  p, s, k = len(tokens), len(scales), num_per_prompt
  rows = np.array([(i, j) for i in range(p) for j in range(s) for _ in range(k)])
  flat = sample_in_batches(sampler, tokens[rows[:, 0]], mask[rows[:, 0]],
                           np.asarray(scales, np.float32)[rows[:, 1]], rng, batch_size, num_devices,
                           progress=progress)
  return images_lib.to_uint8(flat).reshape(p, s, k, *flat.shape[1:])
