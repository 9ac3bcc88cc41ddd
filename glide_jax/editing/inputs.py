"""What an edit starts from: the images (test examples or PNG files) and the mask (named or a PNG)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax.editing.masks import MASK_NAMES, named_mask, resize_nearest
from glide_jax.errors import UserError

CHANNEL_MODES = {1: "L", 3: "RGB"}  # Pillow's modes for grey and colour images.


@dataclasses.dataclass(frozen=True)
class EditImages:
  """uint8 images [N, S, S, C] at the model's size, where each came from, and its label if known."""

  images: np.ndarray
  sources: tuple[str, ...]
  labels: Optional[np.ndarray]  # The test split's labels for "test:..." images; None for files.
  source_size: int  # Their side before resizing (28 for MNIST), which a mask PNG may also have.


def _read_png(path: str, what: str):
  from PIL import Image, UnidentifiedImageError
  if not os.path.isfile(path):
    raise UserError(f"The {what} {path!r} does not exist; give the path of a PNG file.")
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise UserError(f"The {what} {path!r} cannot be read as an image ({type(e).__name__}: {e}); give a PNG "
                    f"file.") from None


def read_image_png(path: str, channels: int) -> np.ndarray:
  """uint8 [H, W, channels] from a grey (1 channel) or RGB (3 channels) PNG, as the model takes."""
  image = _read_png(path, "image")
  mode = image.mode
  if mode in ("1", "I;16", "I", "P") or (mode in ("LA", "RGBA") and image.getextrema()[-1][0] == 255):
    image = image.convert("RGB" if mode == "P" or mode == "RGBA" else "L")  # Same pixels, no transparency.
  if image.mode not in CHANNEL_MODES.values():
    raise UserError(f"The image {path!r} is {image.mode} (it has transparency or an unusual format); save it "
                    f"as a grey (L) or RGB PNG.")
  got = 1 if image.mode == "L" else 3
  if got != channels:
    raise UserError(f"The image {path!r} has {got} channel(s) ({image.mode}) but the model takes {channels} "
                    f"({CHANNEL_MODES[channels]}); convert it, e.g. PIL.Image.open(path).convert("
                    f"'{CHANNEL_MODES[channels]}').save(path).")
  array = np.asarray(image, np.uint8)
  if array.shape[0] != array.shape[1]:
    raise UserError(f"The image {path!r} is {array.shape[1]}x{array.shape[0]}; give a square image.")
  return array.reshape(*array.shape[:2], channels)


def load_images(spec: str, data_config: ml_collections.ConfigDict) -> EditImages:
  """The images `spec` names: "test:I,J,..." (examples of data.test_split) or comma-separated PNG paths."""
  size = data_config.image_size
  if spec.startswith("test:"):
    try:
      indices = [int(i) for i in spec[5:].split(",") if i.strip()]
    except ValueError:
      raise UserError(f"config.edit.images = {spec!r}: give test:I,J,... with integer indices, e.g. test:0,1,2.")
    if not indices:
      raise UserError(f"config.edit.images = {spec!r} names no image; e.g. test:0,1,2.")
    test = data_lib.load_dataset(data_config, data_config.test_split)
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
      raise UserError(f"config.edit.images: {data_config.test_split!r} has {len(test)} examples (0 to "
                      f"{len(test) - 1}); {bad} are outside it.")
    labels = test.labels[indices] if isinstance(test, data_lib.ImageDataset) else np.full(len(indices), -1)
    return EditImages(np.asarray(test.images[indices]), tuple(f"test:{i}" for i in indices), labels, size)
  paths = [os.path.expanduser(p.strip()) for p in spec.split(",") if p.strip()]
  arrays = [read_image_png(p, data_config.channels) for p in paths]
  sides = {a.shape[0] for a in arrays}
  if len(sides) > 1:
    raise UserError(f"config.edit.images: the images have different sizes ({sorted(sides)} pixels); give images "
                    f"of one size.")
  return EditImages(resize_bicubic(np.stack(arrays), size), tuple(paths), None, sides.pop())


def resize_bicubic(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, H, W, C] to [N, size, size, C] by PIL's bicubic filter, as glide-text2im's inpaint notebook
  loads an image file. PIL widens the filter by the scale when it shrinks, so a photo larger than the model's
  size is antialiased rather than aliased. (Dataset images keep the bilinear resize the model trained on.)"""
  from PIL import Image

  if images.shape[1:3] == (size, size):
    return images
  channels = images.shape[-1]
  resized = [np.asarray(Image.fromarray(image[..., 0] if channels == 1 else image).resize(
      (size, size), Image.Resampling.BICUBIC)) for image in images]
  return np.stack(resized).reshape(len(images), size, size, channels)


def load_known_mask(spec: str, size: int, source_size: int) -> np.ndarray:
  """The known-pixel mask [size, size, 1] (1 = keep) that `spec` names, or read from a mask PNG in which
  white (>= 128) marks the pixels to generate, of the model's size or the images' own size."""
  if spec in MASK_NAMES or spec.startswith("box:"):
    return named_mask(spec, size)
  path = os.path.expanduser(spec)
  if not os.path.exists(path) and "." not in os.path.basename(path):
    return named_mask(spec, size)  # Neither a file nor a file name: report it as an unknown mask name.
  grey = np.asarray(_read_png(path, "mask").convert("L"))
  if grey.shape not in ((size, size), (source_size, source_size)):
    sizes = " or ".join(sorted({f"{s}x{s}" for s in (size, source_size)}))
    raise UserError(f"The mask {path!r} is {grey.shape[1]}x{grey.shape[0]}, but it must be {sizes} "
                    f"(the model's image size, or the images' own).")
  return (~resize_nearest(grey >= 128, size)).astype(np.float32)[..., None]


def edit_method(config: ml_collections.ConfigDict) -> str:
  """How `config`'s model edits: as an inpainting model, or by the replacement method (diffusion/known_region)."""
  return "inpainting model" if config.model.inpaint else "replacement method"
