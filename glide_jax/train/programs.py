"""The compiled programs of this process, kept for reuse: a second run of the same model, recipe and mesh (a
notebook cell run again, a resumed run, a test after another) neither traces nor compiles them again.

Tracing and lowering the training step and the initialiser, then loading them from the persistent
compilation cache, costs several seconds per `train()` call even when nothing is compiled; a program reused
here costs nothing. Samplers are kept the same way, under this key and their `SamplerSpec`.
The key is the config without the fields that only the host reads (`HOST_ONLY`): the loop's cadence, the
data's location and the other modes' settings. Every other field is part of the key, so a field added later
can only cost a rebuild, never reuse a program built for another value. tests/train/test_programs.py records
every field read while the programs are built and lowered, and checks that none of them is host-only.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any, Callable, Hashable

import jax
import ml_collections

# Fields no training program reads (a whole section where the value is None).
HOST_ONLY: dict[str, tuple[str, ...] | None] = {
    "data": ("data_dir", "download", "download_url", "download_checksums", "train_split", "test_split",
             "prompt_templates", "source", "folder", "caption_feature", "image_feature", "scenes"),
    "train": ("log_every", "checkpoint_every", "keep_checkpoints", "init_from", "max_nonfinite_steps", "sample_every",
              "sample_guidance", "sample_respacing"),
    "sample": None,
    "edit": None,
    "eval": None,
}
# The step count shapes only a schedule that decays towards it.
SCHEDULES_WITHOUT_NUM_STEPS = ("constant",)
MAX_KEPT = 16  # Programs of the most recently used keys; each holds its compiled executables.

_kept: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
_lock = threading.Lock()


def program_key(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[str, jax.sharding.Mesh]:
  """What the training programs of `config` on `mesh` depend on: the config's JSON without `HOST_ONLY`."""
  fields = config.to_dict()
  for section, names in HOST_ONLY.items():
    if names is None:
      fields.pop(section, None)
    else:
      for name in names:
        fields.get(section, {}).pop(name, None)
  if fields.get("train", {}).get("lr_schedule") in SCHEDULES_WITHOUT_NUM_STEPS:
    fields["train"].pop("num_steps", None)
  return json.dumps(fields, sort_keys=True, default=repr), mesh


def kept(kind: str, key: Hashable, build: Callable[[], Any]) -> Any:
  """The program `kind` for `key`, built by `build()` the first time (least recently used ones are dropped)."""
  with _lock:
    if (kind, key) in _kept:
      _kept.move_to_end((kind, key))
      return _kept[(kind, key)]
  program = build()
  with _lock:
    _kept[(kind, key)] = program
    while len(_kept) > MAX_KEPT:
      _kept.popitem(last=False)
  return program


def clear() -> None:
  """Drops every kept program (their memory goes with the last reference)."""
  with _lock:
    _kept.clear()
