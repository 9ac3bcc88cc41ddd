"""What an edit could reach with real handwriting: nearest-neighbour completion.

For an image to edit, a known-pixel mask and a prompted class, the completion keeps the image's known pixels
and takes the rest from the training image of the prompted class whose known pixels are closest (L2). The
evaluator's reading of these composites is the edit accuracy that real digits fitting the kept pixels reach:
a baseline for `--mode=eval_edit`, not an oracle (a model may draw a better fit than any training image).
"""

from __future__ import annotations

import numpy as np

# Distances for this many edits at a time: [rows, pool of one class] float64 stays under about 100 MB.
_ROWS_PER_BLOCK = 1024


def edit_targets(labels: np.ndarray, num_classes: int, targets: str) -> tuple[np.ndarray, np.ndarray]:
  """(image index, prompted class) of every edit: "next" edits image i once, to (label + 1) mod classes; "all"
  edits it to every other class, image-major (image 0's targets in class order, then image 1's, ...)."""
  labels = np.asarray(labels, np.int64)
  if targets == "next":
    return np.arange(len(labels)), (labels + 1) % num_classes
  classes = np.arange(num_classes)
  index = np.repeat(np.arange(len(labels)), num_classes - 1)
  prompted = np.concatenate([classes[classes != label] for label in labels]) if len(labels) else classes[:0]
  return index, prompted.astype(np.int64)


def nearest_completions(images: np.ndarray, prompted: np.ndarray, known: np.ndarray, pool_images: np.ndarray,
                        pool_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(composites uint8 [n, H, W, C], pool index [n]): image i's known pixels, and elsewhere those of the pool
  image of class prompted[i] nearest to it over the known pixels (ties: the lowest pool index).

  images uint8 [n, H, W, C]; known [H, W, 1] with 1 = kept (one mask for every edit); pool_images uint8
  [M, H, W, C] and pool_labels [M] (the training split).
  """
  keep = np.broadcast_to(np.asarray(known) > 0.5, images.shape[1:]).reshape(-1)
  # float64: sums of squared uint8 differences are integers below 2^53, so distances and ties are exact.
  flat = images.reshape(len(images), -1)[:, keep].astype(np.float64)
  pool_flat = pool_images.reshape(len(pool_images), -1)[:, keep]
  chosen = np.empty(len(images), np.int64)
  for c in np.unique(prompted):
    rows, members = np.flatnonzero(prompted == c), np.flatnonzero(pool_labels == c)
    if not len(members):
      raise ValueError(f"The pool has no image of class {c} to complete an edit with.")
    candidates = pool_flat[members].astype(np.float64)
    # |a − b|² = |a|² − 2a·b + |b|²; |a|² is the same for every candidate of a row, so it is left out.
    sq_norms = np.einsum("ij,ij->i", candidates, candidates)
    for start in range(0, len(rows), _ROWS_PER_BLOCK):
      block = rows[start:start + _ROWS_PER_BLOCK]
      distances = sq_norms[None] - 2.0 * flat[block] @ candidates.T
      chosen[block] = members[np.argmin(distances, axis=1)]
  composites = np.where(np.asarray(known) > 0.5, images, pool_images[chosen])
  return composites.astype(np.uint8), chosen
