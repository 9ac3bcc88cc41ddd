"""Assertions on pytrees shared by the training tests."""

import jax
import numpy as np


def assert_trees_equal(a, b):
  """Same structure and bit-identical leaves."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
