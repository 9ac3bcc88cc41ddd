"""The nearest-neighbour completion baseline of --mode=eval_edit, against brute force."""

import numpy as np
import pytest

from glide_jax.editing.masks import named_mask
from glide_jax.editing.nearest import edit_targets, nearest_completions


def test_edit_targets_next_and_all():
  labels = np.array([3, 9, 0])
  which, prompted = edit_targets(labels, 10, "next")
  np.testing.assert_array_equal(which, [0, 1, 2])
  np.testing.assert_array_equal(prompted, [4, 0, 1])
  which, prompted = edit_targets(labels, 10, "all")
  assert len(which) == len(prompted) == 27
  np.testing.assert_array_equal(which, np.repeat([0, 1, 2], 9))
  for i, label in enumerate(labels):  # Every other class once, in order.
    np.testing.assert_array_equal(prompted[9 * i:9 * i + 9], [c for c in range(10) if c != label])
  assert edit_targets(labels[:0], 10, "all")[1].shape == (0,)


@pytest.mark.parametrize("mask", ["bottom", "box:0,5,16,16"])
def test_completion_keeps_the_known_pixels_and_fills_from_the_nearest_image_of_the_prompted_class(mask):
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, (200, 16, 16, 1), dtype=np.uint8)
  pool_labels = rng.integers(0, 4, 200)
  images = rng.integers(0, 256, (30, 16, 16, 1), dtype=np.uint8)
  prompted = rng.integers(0, 4, 30)
  known = named_mask(mask, 16)
  composites, chosen = nearest_completions(images, prompted, known, pool, pool_labels)
  assert composites.shape == images.shape and composites.dtype == np.uint8
  keep = np.broadcast_to(known > 0.5, images.shape[1:])
  np.testing.assert_array_equal(composites[:, keep], images[:, keep])  # The known region, exactly.
  np.testing.assert_array_equal(composites[:, ~keep], pool[chosen][:, ~keep])
  np.testing.assert_array_equal(pool_labels[chosen], prompted)  # Completed from the prompted class.
  for i in range(30):  # The nearest by brute force over the known pixels, the first of any ties.
    members = np.flatnonzero(pool_labels == prompted[i])
    d = ((pool[members].astype(np.int64) - images[i].astype(np.int64)) ** 2)[:, keep].sum(axis=1)
    assert chosen[i] == members[np.argmin(d)]


def test_an_exact_copy_in_the_pool_is_found_and_ties_go_to_the_first():
  rng = np.random.default_rng(1)
  pool = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
  labels = np.arange(50) % 5
  known = named_mask("bottom", 8)
  pool[17, :4] = pool[12, :4]  # Images 12 and 17 (both class 2) have the same known (top) half.
  composites, chosen = nearest_completions(pool[[12, 33]], np.array([2, 3]), known, pool, labels)
  np.testing.assert_array_equal(chosen, [12, 33])
  np.testing.assert_array_equal(composites, pool[[12, 33]])
  with pytest.raises(ValueError, match="no image of class 7"):
    nearest_completions(pool[:1], np.array([7]), known, pool, labels)
