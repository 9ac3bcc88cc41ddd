"""Edit composites: training examples that teach an inpainting model to follow a prompt the kept pixels
disagree with (#34).

GLIDE fine-tunes its inpainting model on images whose kept part always agrees with the caption, so the model
learns to trust the pixels over the words. A composite keeps half of one training image (of class a) and
fills the other half from the training image of another class b whose kept half fits it best (the
nearest-neighbour completion of `editing.nearest`); its prompt is b and the loss's target is the composite.
So the model sees, as in an edit, kept pixels that began another digit, and a completion of the prompted
digit that fits them.
"""

from __future__ import annotations

import numpy as np

from glide_jax.editing.masks import MASK_NAMES, named_mask

_STREAM = 12  # np.random.default_rng([seed, step, _STREAM]): the composite draws of batch `step`.


class EditComposer:
  """Turns a share of each batch's examples into edit composites, as a pure function of (seed, step).

  images uint8 [N, H, W, C] and labels [N]: the training split. Each composite's fill comes from the nearest of
  `candidates` training images per class (the first of a seeded permutation), over the kept half.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, share: float, seed: int,
               candidates: int = 1000):
    self.images, self.labels = images, np.asarray(labels, np.int64)
    self.num_classes, self.share, self.seed = num_classes, float(share), seed
    size = images.shape[1]
    self.masks = np.stack([named_mask(name, size) for name in MASK_NAMES])  # [4, H, W, 1], 1 = kept.
    order = np.random.default_rng([seed, _STREAM]).permutation(len(images))
    self.members = [order[self.labels[order] == c][:candidates] for c in range(num_classes)]
    # Per mask and class: the candidates' kept pixels and squared norms, in float32 (a near-tie may go either
    # way, which a training example does not mind; the evaluation's baseline is exact).
    self._kept, self._norms = {}, {}
    for m, mask in enumerate(self.masks):
      keep = np.broadcast_to(mask > 0.5, images.shape[1:]).reshape(-1)
      for c, members in enumerate(self.members):
        kept = images[members].reshape(len(members), -1)[:, keep].astype(np.float32)
        self._kept[m, c], self._norms[m, c] = kept, np.einsum("ij,ij->i", kept, kept)

  def draws(self, step: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is composite [batch] bool, class offset in 1..classes−1 [batch], mask index [batch]) of batch `step`."""
    rng = np.random.default_rng([self.seed, step, _STREAM])
    u, offset, mask = rng.random(batch), rng.integers(1, self.num_classes, batch), rng.integers(0, 4, batch)
    return u < self.share, offset, mask

  def __call__(self, step: int, images: np.ndarray, labels: np.ndarray, rows: slice,
               global_batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This process's rows of batch `step` (uint8 images and labels, the global batch's `rows`) with its
    composites made: (images, labels, known masks float32 [b, H, W, 1], is composite [b])."""
    composite, offset, mask_index = (d[rows] for d in self.draws(step, global_batch))
    images, labels = images.copy(), np.asarray(labels, np.int64).copy()
    known = np.ones((len(images), *self.masks.shape[1:]), np.float32)
    for i in np.flatnonzero(composite):
      m, prompted = int(mask_index[i]), int((labels[i] + offset[i]) % self.num_classes)
      keep = self.masks[m] > 0.5
      kept = images[i][np.broadcast_to(keep, images.shape[1:])].astype(np.float32)
      distances = self._norms[m, prompted] - 2.0 * self._kept[m, prompted] @ kept
      fill = self.images[self.members[prompted][np.argmin(distances)]]
      images[i] = np.where(keep, images[i], fill)
      labels[i], known[i] = prompted, self.masks[m]
    return images, labels, known, composite
