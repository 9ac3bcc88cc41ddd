"""Reading a scene: which digit each 2x2 cell holds (or none), by the MNIST evaluation classifier at the
cell's size, and whether that layout is one a caption allows (`scenes.allowed_layouts`)."""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import numpy as np

from glide_jax import scenes

# A cell with fewer pixels brighter than half is read as empty. Real MNIST digits at 16x16 light far more
# (docs/training.md gives the reader's accuracy on real scenes, which this threshold is judged by).
EMPTY_MAX_BRIGHT_PIXELS = 4
# How a relation between two different digits is drawn: as said, in the other order (what a model blind to word
# order draws about half the time), the digit named first in both filled cells, the one named second in both,
# or anything else.
RELATION_OUTCOMES = ("right", "swapped", "first_twice", "second_twice", "other")
# Which of a relation fact's digits, ("left", a, b) or ("above", a, b), each template names first.
_NAMED_FIRST = {"left of": 1, "above": 1, "right of": 2, "below": 2}


def cells_of(images: np.ndarray) -> np.ndarray:
  """uint8 [N, S, S, C] → [N · 4, S/2, S/2, C], cells in reading order (top left, top right, ...)."""
  n, size, _, c = images.shape
  cell = size // scenes.GRID
  grid = images.reshape(n, scenes.GRID, cell, scenes.GRID, cell, c).transpose(0, 1, 3, 2, 4, 5)
  return grid.reshape(n * scenes.GRID * scenes.GRID, cell, cell, c)


def read_layouts(images: np.ndarray, outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(layouts int [N, 4]: each cell's digit or -1, features [N, 4 · D]: the cells' classifier features side by
  side) of uint8 scenes; `outputs(cells)` gives the classifier's (features, logits)."""
  cells = cells_of(images)
  features, logits = outputs(cells)
  bright = (cells > 127).reshape(len(cells), -1).sum(axis=1)
  digits = np.where(bright > EMPTY_MAX_BRIGHT_PIXELS, np.argmax(logits, axis=-1), -1)
  cells_per_scene = scenes.GRID * scenes.GRID
  return digits.reshape(-1, cells_per_scene), features.reshape(len(images), -1)


def fully_right(layouts: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """bool [N]: whether each scene's read layout is one its caption allows (every digit right and in place,
  the other cells empty)."""
  return np.array([tuple(int(d) for d in layout) in scenes.allowed_layouts(caption)
                   for layout, caption in zip(layouts, captions)], bool)


def right_digits(layouts: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """bool [N]: whether each scene holds its caption's digits, in any cells (the other cells empty). With
  `fully_right` it tells a model that draws the right digits in the wrong places from one that draws others."""
  digits_of = lambda layout: tuple(sorted(int(d) for d in layout if d >= 0))  # noqa: E731
  return np.array([digits_of(layout) in {digits_of(a) for a in scenes.allowed_layouts(caption)}
                   for layout, caption in zip(layouts, captions)], bool)


def share_by_template(right: np.ndarray, captions: Sequence[str]) -> dict[str, float]:
  """The share fully right per caption template (scenes.TEMPLATES), for the templates present."""
  templates = np.array([scenes.template_of(c) for c in captions])
  return {t: float(np.mean(right[templates == t])) for t in scenes.TEMPLATES if np.any(templates == t)}


def relation_outcomes(layouts: np.ndarray, captions: Sequence[str]) -> dict[str, dict[str, float]]:
  """Per relation template, over its scenes whose caption names two different digits: the share of each of
  RELATION_OUTCOMES. Many "swapped" say the word order is not learned; a digit drawn twice, that a word's
  digit is lost to the other's."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for layout, caption in zip(layouts, captions):
    fact, template = scenes.fact_of(caption), scenes.template_of(caption)
    if template not in _NAMED_FIRST or fact[1] == fact[2]:
      continue
    layout = tuple(int(d) for d in layout)
    first = fact[_NAMED_FIRST[template]]
    second = fact[3 - _NAMED_FIRST[template]]
    filled = sorted(d for d in layout if d >= 0)
    if layout in scenes.layouts_of(fact):
      outcome = "right"
    elif layout in scenes.layouts_of((fact[0], fact[2], fact[1])):
      outcome = "swapped"
    else:
      outcome = {(first, first): "first_twice", (second, second): "second_twice"}.get(tuple(filled), "other")
    counts[template][outcome] += 1
  return {t: {o: counts[t][o] / sum(counts[t].values()) for o in RELATION_OUTCOMES}
          for t in scenes.TEMPLATES if t in counts}
