"""MNIST scenes: digits placed in the 2x2 cells of a canvas, captioned from a small grammar in which word
order matters ("a 3 to the left of a 7" is not "a 7 to the left of a 3").

A caption states a *fact*, and a fact allows a set of *layouts* (what each cell holds, cells in reading
order: top left, top right, bottom left, bottom right; -1 for empty):

  ("left", a, b)    "a {a} to the left of a {b}" = "a {b} to the right of a {a}" ("an 8"): side by side in
                    one row, the other row empty
  ("above", a, b)   "a {a} above a {b}" = "a {b} below a {a}": a over b in one column, the other empty
  ("two", a)        "two {a}s": two cells hold an {a}, the others are empty
  ("corner", a, k)  "a {a} in the {top left, top right, ...} corner": cell k holds it, the others are empty

A scene is made from its fact: a layout drawn from those the fact allows, each digit a drawn MNIST image of
its class. So every caption matches its image by construction, and `allowed_layouts(caption)` is what an
evaluation checks a sample against. Everything is a pure function of (seed, split, index). A share of the
facts is held out of the training split: the `held_out` split's captions were never seen in training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from typing import Optional

import numpy as np

from glide_jax.caption_data import CaptionDataset
from glide_jax.errors import UserError

GRID = 2  # Cells per side.
CORNERS = ("top left", "top right", "bottom left", "bottom right")
SPLITS = ("train", "test", "held_out")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
Fact = tuple  # ("left", a, b) | ("above", a, b) | ("two", a) | ("corner", a, k)
Layout = tuple[int, ...]  # What each cell holds (a digit, or -1), cells in reading order.

_A = r"an? (\d)"  # "a 3", "an 8".
_PATTERNS = (
    (re.compile(rf"^{_A} to the left of {_A}$"), lambda a, b: ("left", a, b)),
    (re.compile(rf"^{_A} to the right of {_A}$"), lambda a, b: ("left", b, a)),
    (re.compile(rf"^{_A} above {_A}$"), lambda a, b: ("above", a, b)),
    (re.compile(rf"^{_A} below {_A}$"), lambda a, b: ("above", b, a)),
    (re.compile(r"^two (\d)s$"), lambda a: ("two", a)),
)
_CORNER = re.compile(rf"^{_A} in the (top left|top right|bottom left|bottom right) corner$")


def _a(digit: int) -> str:
  """The digit with its article: "a 3", but "an 8"."""
  return f"an {digit}" if digit == 8 else f"a {digit}"


def all_facts() -> list[Fact]:
  """Every fact the grammar states, in a fixed order."""
  digits = range(10)
  return ([("left", a, b) for a in digits for b in digits] + [("above", a, b) for a in digits for b in digits]
          + [("two", a) for a in digits] + [("corner", a, k) for a in digits for k in range(GRID * GRID)])


def captions_of(fact: Fact) -> tuple[str, ...]:
  """Every caption stating `fact` (both word orders of a relation)."""
  kind, a = fact[0], fact[1]
  if kind == "left":
    return (f"{_a(a)} to the left of {_a(fact[2])}", f"{_a(fact[2])} to the right of {_a(a)}")
  if kind == "above":
    return (f"{_a(a)} above {_a(fact[2])}", f"{_a(fact[2])} below {_a(a)}")
  if kind == "two":
    return (f"two {a}s",)
  return (f"{_a(a)} in the {CORNERS[fact[2]]} corner",)


def fact_of(caption: str) -> Optional[Fact]:
  """The fact a caption of the grammar states (spaces and case aside), or None for any other text."""
  text = " ".join(caption.lower().split())
  for pattern, make in _PATTERNS:
    match = pattern.match(text)
    if match:
      return make(*(int(g) for g in match.groups()))
  match = _CORNER.match(text)
  return ("corner", int(match.group(1)), CORNERS.index(match.group(2))) if match else None


TEMPLATES = ("left of", "right of", "above", "below", "two", "corner")


def template_of(caption: str) -> Optional[str]:
  """Which phrasing of the grammar a caption uses (one of TEMPLATES), or None for other text."""
  text = " ".join(caption.lower().split())
  for template, (pattern, _) in zip(TEMPLATES, _PATTERNS):
    if pattern.match(text):
      return template
  return "corner" if _CORNER.match(text) else None


def _cell(row: int, col: int) -> int:
  return row * GRID + col


@functools.lru_cache(maxsize=None)
def layouts_of(fact: Fact) -> tuple[Layout, ...]:
  """The layouts a fact allows, in a fixed order."""
  kind, a = fact[0], fact[1]
  placements: list[dict[int, int]] = []
  if kind == "left":
    placements = [{_cell(r, 0): a, _cell(r, 1): fact[2]} for r in range(GRID)]
  elif kind == "above":
    placements = [{_cell(0, c): a, _cell(1, c): fact[2]} for c in range(GRID)]
  elif kind == "two":
    placements = [{i: a, j: a} for i, j in itertools.combinations(range(GRID * GRID), 2)]
  elif kind == "corner":
    placements = [{fact[2]: a}]
  return tuple(tuple(p.get(i, -1) for i in range(GRID * GRID)) for p in placements)


def allowed_layouts(caption: str) -> tuple[Layout, ...]:
  """The layouts a caption allows; () for text outside the grammar."""
  fact = fact_of(caption)
  return layouts_of(fact) if fact else ()


def held_out_facts(seed: int, fraction: float) -> frozenset:
  """round(fraction · n) facts of each kind, drawn by `seed`: the captions the training split never shows."""
  held = []
  for k, kind in enumerate(("left", "above", "two", "corner")):
    facts = [f for f in all_facts() if f[0] == kind]
    count = round(fraction * len(facts))
    chosen = np.random.default_rng([seed, 7, k]).choice(len(facts), count, replace=False) if count else []
    held.extend(facts[i] for i in chosen)
  return frozenset(held)


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What makes a scene split: its size and seed, the held-out share and the canvas size."""

  count: int
  seed: int
  held_out: float
  image_size: int


def make_scenes(digits: np.ndarray, labels: np.ndarray, split: str, spec: SceneSpec) -> tuple[CaptionDataset,
                                                                                                np.ndarray]:
  """(the split's scenes, their layouts int [N, 4]) from MNIST digits uint8 [M, c, c, 1] (c = image_size / 2)
  and their labels: the train split's from training facts, the test split's too (new handwriting), the
  held_out split's from held-out facts only."""
  if split not in SPLITS:
    raise UserError(f"The MNIST scenes have the splits {', '.join(SPLITS)}; {split!r} is none of them.")
  held = held_out_facts(spec.seed, spec.held_out)
  facts = [f for f in all_facts() if (f in held) == (split == "held_out")]
  if not facts:
    raise UserError(f"The {split!r} split of the MNIST scenes has no facts to show with data.scenes.held_out = "
                    f"{spec.held_out}; hold out a share of them (e.g. 0.1).")
  cell, n = spec.image_size // GRID, spec.count
  # Row i of these uniforms is scene i's alone (numpy fills them in order), so a scene does not depend on how
  # many follow it: the fact, its layout, and the MNIST image in each cell.
  u = np.random.default_rng([spec.seed, _SPLIT_IDS[split]]).random((n, 2 + GRID * GRID))
  chosen = (u[:, 0] * len(facts)).astype(np.int64)
  layouts = np.array([layouts_of(facts[f])[int(v * len(layouts_of(facts[f])))] for f, v in zip(chosen, u[:, 1])],
                     np.int64).reshape(n, GRID * GRID)
  images = np.zeros((n, spec.image_size, spec.image_size, 1), np.uint8)
  for k in range(GRID * GRID):
    row, col = divmod(k, GRID)
    for digit in range(10):
      pool = np.flatnonzero(labels == digit)
      here = layouts[:, k] == digit
      picks = pool[(u[here, 2 + k] * len(pool)).astype(np.int64)]
      images[here, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = digits[picks]
  captions = tuple(captions_of(facts[f]) for f in chosen)
  origins = tuple((f"mnist_scenes split {split!r} scene {i}",) * len(c) for i, c in enumerate(captions))
  return CaptionDataset(images, captions, origins), layouts


def export_folder(dataset: CaptionDataset, folder: str) -> None:
  """Writes a split as a caption folder: PNGs in subfolders of 1,000 and a captions.jsonl listing each with
  all its captions."""
  import json
  import os

  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
    for i, (image, captions) in enumerate(zip(dataset.images, dataset.captions)):
      name = f"{i // 1000:03d}/{i:06d}.png"
      os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
      Image.fromarray(np.asarray(image)[..., 0]).save(os.path.join(folder, name))
      f.write(json.dumps({"file": name, "caption": list(captions)}) + "\n")

