"""The images behind an evaluation's numbers, saved so that anyone can rescore them with their own classifier.

DIR/eval/samples.npz (--mode=eval) and DIR/eval/edit_samples.npz (--mode=eval_edit) hold one row per
image: `images` uint8 [N, H, W, C], `prompted` int32 [N] (the class the prompt asked for), `guidance_scale`
float32 [N] and `class_names` [num_classes]; an edit evaluation adds `method` [N] and `original` int32 [N]
(the test digit's own class). `setting`, a string, names how the samples were drawn (the report's sampling
settings as JSON). Plain arrays only, so `np.load(path)` reads it with allow_pickle=False.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np


def save_samples(path: str, images: np.ndarray, prompted: np.ndarray, guidance_scale: np.ndarray,
                 class_names: list[str], setting: Optional[dict] = None, **extra_rows: np.ndarray) -> None:
  """Writes the rows (and extra per-row arrays, e.g. method=...) to `path`, compressed, atomically; `setting`
  (how they were sampled) as a JSON string."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"samples are uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
  rows = {"images": images, "prompted": np.asarray(prompted, np.int32),
          "guidance_scale": np.asarray(guidance_scale, np.float32),
          **{k: np.asarray(v) for k, v in extra_rows.items()}}
  for name, value in rows.items():
    if value.shape[:1] != images.shape[:1]:
      raise ValueError(f"{name} has {value.shape[:1]} rows, the images {images.shape[:1]}")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  named = {} if setting is None else {"setting": np.asarray(json.dumps(setting, sort_keys=True))}
  np.savez_compressed(tmp, class_names=np.asarray(class_names, dtype=str), **named, **rows)
  os.replace(tmp, path)


def load_samples(path: str) -> dict[str, np.ndarray]:
  """Every array of a samples file, read without unpickling anything."""
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
