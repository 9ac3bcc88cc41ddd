"""Reading scenes: cells cut in reading order, empty cells by their bright pixels, a layout judged against
what its caption allows, the share right per template, and how a relation was drawn."""

import numpy as np

from glide_jax.evaluation.scene_reader import (
  cells_of,
  fully_right,
  read_layouts,
  relation_outcomes,
  right_digits,
  share_by_template,
)


def scene(cells, size=8):
  """A 16x16 scene whose cell k (reading order) is filled with cells[k] (0 = empty)."""
  image = np.zeros((2 * size, 2 * size, 1), np.uint8)
  for k, value in enumerate(cells):
    r, c = divmod(k, 2)
    image[r * size:(r + 1) * size, c * size:(c + 1) * size] = value
  return image


def fake_outputs(cells):
  """A 'classifier' that reads digit d from a cell filled with 130 + d (features: the fill value)."""
  value = cells.reshape(len(cells), -1)[:, 0].astype(int)
  logits = np.eye(10)[np.clip(value - 130, 0, 9)]
  return value[:, None].astype(np.float32), logits


def test_cells_are_cut_in_reading_order():
  images = np.stack([scene([1, 2, 3, 4]), scene([5, 6, 7, 8])])
  cells = cells_of(images)
  assert cells.shape == (8, 8, 8, 1)
  assert [int(c[0, 0, 0]) for c in cells] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_layouts_are_read_with_dim_cells_empty_and_judged_against_the_caption():
  images = np.stack([scene([133, 137, 0, 0]), scene([0, 0, 133, 137]), scene([137, 133, 0, 0]),
                     scene([133, 137, 100, 0]), scene([134, 0, 0, 134])])
  # A cell lit by a few bright pixels only is still empty.
  images[0, 8:10, 0:2] = 200
  layouts, features = read_layouts(images, fake_outputs)
  assert layouts.tolist() == [[3, 7, -1, -1], [-1, -1, 3, 7], [7, 3, -1, -1], [3, 7, -1, -1], [4, -1, -1, 4]]
  assert features.shape == (5, 4)
  captions = ["a 3 to the left of a 7", "a 7 to the right of a 3", "a 3 to the left of a 7", "a 3 above a 7",
              "two 4s"]
  assert fully_right(layouts, captions).tolist() == [True, True, False, False, True]
  # The right digits in the wrong places (swapped; a pair stacked for "left of") still hold the caption's digits.
  assert right_digits(layouts, captions).tolist() == [True, True, True, True, True]
  assert right_digits(np.array([[3, 3, -1, -1], [3, -1, -1, -1], [3, 7, 7, -1], [-1, 4, 4, -1]]),
                      ["a 3 to the left of a 7"] * 3 + ["two 4s"]).tolist() == [False, False, False, True]
  assert right_digits(np.array([[-1, -1, 5, -1]]), ["a 5 in the top left corner"]).tolist() == [True]
  assert not fully_right(layouts[:1], ["three and seven"])[0]  # Text outside the grammar is never right.
  shares = share_by_template(fully_right(layouts, captions), captions)
  assert shares == {"left of": 0.5, "right of": 1.0, "above": 0.0, "two": 1.0}


def test_a_relation_is_read_as_right_swapped_or_one_digit_twice_by_the_order_its_caption_names_them():
  layouts = np.array([[3, 7, -1, -1], [7, 3, -1, -1], [3, 3, -1, -1], [-1, -1, 7, 7], [3, -1, 7, -1],
                      [-1, -1, 3, 7], [7, 7, -1, -1], [3, 3, -1, -1], [3, -1, 7, -1], [5, 5, -1, -1], [3, 7, -1, -1]])
  captions = ["a 3 to the left of a 7"] * 5 + ["a 7 to the right of a 3"] * 3 + ["a 3 below a 7",
              "a 5 to the left of a 5", "two 4s"]
  outcomes = relation_outcomes(layouts, captions)
  assert list(outcomes) == ["left of", "right of", "below"]  # Equal digits and other templates are left out.
  assert outcomes["left of"] == {"right": 0.2, "swapped": 0.2, "first_twice": 0.2, "second_twice": 0.2,
                                 "other": 0.2}  # A pair stacked for "left of" is "other".
  # "a 7 to the right of a 3" names the 7 first: 7 7 is the first-named digit twice, 3 3 the second.
  assert outcomes["right of"] == {"right": 1 / 3, "swapped": 0.0, "first_twice": 1 / 3, "second_twice": 1 / 3,
                                  "other": 0.0}
  assert outcomes["below"] == {"right": 0.0, "swapped": 1.0, "first_twice": 0.0, "second_twice": 0.0, "other": 0.0}
