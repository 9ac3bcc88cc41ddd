"""Edit images from files, loaded as glide-text2im's inpaint notebook loads them."""

import numpy as np
from PIL import Image

from glide_jax import data as data_lib
from glide_jax.editing.inputs import load_images, resize_bicubic
from helpers.runs import tiny_config


def test_image_files_are_resized_by_pils_bicubic_filter_antialiased_when_shrinking(tmp_path):
  # A one-pixel checkerboard: grey at any smaller size when the filter is widened by the scale, black and
  # white stripes (aliasing) when it is not.
  board = ((np.indices((70, 70)).sum(0) % 2) * 255).astype(np.uint8)
  Image.fromarray(board).save(tmp_path / "board.png")
  config = tiny_config()  # 16x16 grey images.
  images = load_images(str(tmp_path / "board.png"), config.data)
  expected = np.asarray(Image.fromarray(board).resize((16, 16), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(images.images[0, ..., 0], expected)
  assert images.images.shape == (1, 16, 16, 1) and images.source_size == 70
  assert np.abs(images.images.astype(int) - 128).max() <= 2
  aliased = data_lib.resize_images(board[None, ..., None], 16)  # The dataset's bilinear resize, for contrast.
  assert np.ptp(aliased) > 150


def test_rgb_images_keep_their_channels_and_a_model_sized_image_is_untouched():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  resized = resize_bicubic(rgb, 16)
  assert resized.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(resized[1], np.asarray(Image.fromarray(rgb[1]).resize((16, 16), Image.BICUBIC)))
  same = rng.integers(0, 256, (1, 16, 16, 1), dtype=np.uint8)
  assert resize_bicubic(same, 16) is same
