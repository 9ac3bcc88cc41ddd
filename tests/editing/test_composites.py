"""Edit composites for inpainting training (#34 item 3): pure in (seed, step), the kept half exact, the fill
from the nearest candidate of the prompted class, and the training step's masks follow them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.editing.composites import EditComposer
from glide_jax.editing.masks import random_known_masks
from glide_jax.train.step import INPAINT_MASK_STREAM, known_masks

SIZE, CLASSES = 8, 4


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (120, SIZE, SIZE, 1), dtype=np.uint8), np.arange(120) % CLASSES


def test_composites_keep_a_half_and_fill_it_from_the_nearest_image_of_the_prompted_class(data):
  images, labels = data
  composer = EditComposer(images, labels, CLASSES, share=1.0, seed=3, candidates=20)
  batch = np.arange(16)
  out, prompted, known, composite = composer(5, images[batch], labels[batch], slice(0, 16), 16)
  assert composite.all() and out.dtype == np.uint8 and known.shape == (16, SIZE, SIZE, 1)
  assert np.all(prompted != labels[batch])
  for i in range(16):
    keep = known[i] > 0.5
    assert keep.sum() == SIZE * SIZE // 2  # One half kept.
    np.testing.assert_array_equal(out[i][keep], images[i][keep])
    members = composer.members[prompted[i]]
    assert len(members) == 20 and np.all(labels[members] == prompted[i])
    d = ((images[members].astype(np.int64) - images[i].astype(np.int64)) ** 2)[:, keep].sum(axis=1)
    np.testing.assert_array_equal(out[i][~keep], images[members[np.argmin(d)]][~keep])


def test_composites_are_a_pure_function_of_seed_and_step_and_split_over_processes(data):
  images, labels = data
  composer = EditComposer(images, labels, CLASSES, share=0.5, seed=3, candidates=20)
  batch = np.arange(40, 56)
  whole = composer(7, images[batch], labels[batch], slice(0, 16), 16)
  again = EditComposer(images, labels, CLASSES, share=0.5, seed=3, candidates=20)(
      7, images[batch], labels[batch], slice(0, 16), 16)
  for a, b in zip(whole, again):
    np.testing.assert_array_equal(a, b)
  assert 0 < whole[3].sum() < 16  # About half are composites.
  plain = ~whole[3]
  np.testing.assert_array_equal(whole[0][plain], images[batch][plain])  # The others as they were.
  np.testing.assert_array_equal(whole[1][plain], labels[batch][plain])
  assert np.all(whole[2][plain] == 1.0)
  second = composer(7, images[batch][8:], labels[batch][8:], slice(8, 16), 16)  # Process 1 of 2.
  for a, b in zip(whole, second):
    np.testing.assert_array_equal(a[8:], b)
  assert not np.array_equal(composer(8, images[batch], labels[batch], slice(0, 16), 16)[3], whole[3])
  none = EditComposer(images, labels, CLASSES, share=0.0, seed=3, candidates=20)
  assert not none(7, images[batch], labels[batch], slice(0, 16), 16)[3].any()


def test_the_training_step_masks_a_composite_by_its_own_half():
  rng = jax.random.key(1)
  images = jnp.zeros((4, SIZE, SIZE, 1))
  drawn = random_known_masks(jax.random.fold_in(rng, INPAINT_MASK_STREAM), 4, SIZE)
  np.testing.assert_array_equal(known_masks(rng, {"images": images}), drawn)
  own = jnp.zeros((4, SIZE, SIZE, 1)).at[:, :SIZE // 2].set(1.0)
  got = known_masks(rng, {"images": images, "known": own, "composite": jnp.array([True, False, True, False])})
  np.testing.assert_array_equal(got[::2], own[::2])
  np.testing.assert_array_equal(got[1::2], drawn[1::2])
