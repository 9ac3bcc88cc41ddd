"""Inpainting masks: the random training masks' shapes and coverage, and the masks an edit names."""

import jax
import numpy as np
import pytest

from glide_jax.editing import masks
from glide_jax.errors import UserError

SIZE = 32


def test_random_training_masks_are_halves_or_rectangles_of_20_to_80_percent():
  known = np.asarray(masks.random_known_masks(jax.random.key(0), 2000, SIZE))[..., 0]
  assert known.shape == (2000, SIZE, SIZE) and set(np.unique(known)) == {0.0, 1.0}
  generated = 1.0 - known
  area = generated.mean(axis=(1, 2))
  halves = {name: 1.0 - masks.named_mask(name, SIZE)[..., 0] for name in masks.MASK_NAMES}
  is_half = np.array([any(np.array_equal(g, h) for h in halves.values()) for g in generated])
  # Half of the masks are halves, each half about equally often.
  assert 0.45 < is_half.mean() < 0.55
  counts = [sum(np.array_equal(g, h) for g in generated) for h in halves.values()]
  assert min(counts) > 0.18 * is_half.sum()
  # The others: one axis-aligned rectangle, 20-80% of the image up to rounding.
  rect = generated[~is_half]
  assert np.all(area[~is_half] >= 0.2 - 2 / SIZE) and np.all(area[~is_half] <= 0.8 + 2 / SIZE)
  for g in rect[:200]:
    rows, cols = np.nonzero(g.any(axis=1))[0], np.nonzero(g.any(axis=0))[0]
    assert g[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and g.sum() == len(rows) * len(cols)
  # Positions vary: every pixel is generated in some mask and known in another.
  assert generated.any(axis=0).all() and known.any(axis=0).all()


def test_random_masks_are_a_pure_function_of_the_key():
  a = masks.random_known_masks(jax.random.key(3), 8, SIZE)
  b = masks.random_known_masks(jax.random.key(3), 8, SIZE)
  c = masks.random_known_masks(jax.random.key(4), 8, SIZE)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("name,generated_rows,generated_cols", [
    ("top", slice(0, 16), slice(0, 32)), ("bottom", slice(16, 32), slice(0, 32)),
    ("left", slice(0, 32), slice(0, 16)), ("right", slice(0, 32), slice(16, 32)),
    ("box:4,8,12,30", slice(8, 30), slice(4, 12))])
def test_named_masks_generate_the_named_region(name, generated_rows, generated_cols):
  known = masks.named_mask(name, SIZE)
  expected = np.ones((SIZE, SIZE, 1), np.float32)
  expected[generated_rows, generated_cols] = 0
  np.testing.assert_array_equal(known, expected)


@pytest.mark.parametrize("spec,pattern", [
    ("box:0,0,33,10", r"box must lie inside the 32x32 image"),
    ("box:10,0,5,10", r"x0 < x1"),
    ("box:1,2,3", r"four integers"),
    ("middle", r"Unknown mask 'middle': use one of top, bottom, left, right")])
def test_bad_named_masks_are_user_errors(spec, pattern):
  with pytest.raises(UserError, match=pattern):
    masks.named_mask(spec, SIZE)
