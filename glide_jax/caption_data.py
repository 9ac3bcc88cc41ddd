"""Image–caption pairs: a folder of images with a `captions.jsonl`, or a TFDS dataset with a text feature.

A folder's images are decoded, resized and centre-cropped once into an uint8 `.npy` file in the cache
directory (keyed by the captions file, each image's size and modification time, the image size and channel
count) and read back memory-mapped, so a large folder is never held in memory. Everything is checked before
that file is complete: a bad line, a missing or unreadable image, an empty caption or a mix of grey and
colour images is an error naming the file and line, and no run trains on part of a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from glide_jax.errors import UserError
from glide_jax.runtime import cache_root

CAPTIONS_FILE = "captions.jsonl"
# Bumped whenever the prepared file's contents would change for the same inputs (resizing, cropping, layout).
_PREPARED_FORMAT = 1
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_SPLIT = re.compile(r"^\s*(\w+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*$")


@dataclasses.dataclass(frozen=True)
class CaptionDataset:
  """A split of image–caption pairs: images uint8 [N, H, W, C] (possibly a read-only memory map) and, per
  image, its captions and where each was read ("captions.jsonl line 7"), for error messages."""

  images: np.ndarray
  captions: tuple[tuple[str, ...], ...]
  origins: tuple[tuple[str, ...], ...]

  def __len__(self) -> int:
    return len(self.captions)

  def sample_prompts(self, count: int = 10) -> list[str]:
    """The first `count` distinct first captions: what training's sample grids draw."""
    seen = dict.fromkeys(c[0] for c in self.captions)
    return list(seen)[:count]


def split_range(split: str, num_examples: int, names: Sequence[str], what: str) -> tuple[int, int]:
  """(start, stop) of a TFDS-style split string over `num_examples`: "train", "train[:90%]", "train[-100:]"."""
  match = _SPLIT.match(split)
  if not match or match.group(1) not in names:
    raise UserError(f"config.data split {split!r} cannot be read for {what}: it has the split(s) "
                    f"{', '.join(names)}, which may be sliced as in TFDS, e.g. '{names[0]}[:90%]' or "
                    f"'{names[0]}[-100:]'. Set --config.data.train_split / --config.data.test_split.")

  def bound(text: Optional[str], default: int) -> int:
    if text is None:
      return default
    value = round(num_examples * int(text[:-1]) / 100) if text.endswith("%") else int(text)
    value = value + num_examples if value < 0 else value
    return min(max(value, 0), num_examples)

  start, stop = bound(match.group(2), 0), bound(match.group(3), num_examples)
  if stop <= start:
    raise UserError(f"config.data split {split!r} of {what} ({num_examples} examples) selects none; give a "
                    f"slice with examples in it.")
  return start, stop


# --- The folder source ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
  file: str                    # Relative to the folder, as the captions file names it.
  captions: tuple[str, ...]
  origins: tuple[str, ...]     # "captions.jsonl line N" of each caption.


def _line_error(line: int, why: str) -> UserError:
  return UserError(f"{CAPTIONS_FILE} line {line}: {why}")


def _parse_line(text: str, line: int) -> tuple[str, list[str]]:
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise _line_error(line, f"not a JSON object ({e.msg} at column {e.colno}). Each line is "
                      f'{{"file": "relative/path.png", "caption": "a caption"}}.') from None
  if not isinstance(record, dict) or "file" not in record or "caption" not in record:
    raise _line_error(line, 'each line is a JSON object with "file" (an image path relative to the folder) and '
                      '"caption" (a string, or a list of strings).')
  file, caption = record["file"], record["caption"]
  if not isinstance(file, str) or not file.strip():
    raise _line_error(line, f'"file" is {file!r}; give the image\'s path relative to the folder.')
  if os.path.isabs(file) or os.path.normpath(file).split(os.sep)[0] == "..":
    raise _line_error(line, f'"file" is {file!r}, outside the folder; give a path relative to the folder.')
  captions = caption if isinstance(caption, list) else [caption]
  if not captions or not all(isinstance(c, str) for c in captions):
    raise _line_error(line, f'"caption" is {caption!r}; give a string, or a non-empty list of strings.')
  if any(not c.strip() for c in captions):
    raise _line_error(line, f"{file} has an empty caption; every caption needs words (the empty prompt is the "
                      f"unconditional one, made by train.p_uncond).")
  return file, [" ".join(c.split()) for c in captions]


def read_captions_file(folder: str) -> list[_Entry]:
  """The images of a folder's captions.jsonl in the order they first appear, each with all its captions."""
  path = os.path.join(folder, CAPTIONS_FILE)
  if not os.path.isdir(folder):
    raise UserError(f"config.data.folder = {folder!r} is not a directory; give a folder holding the images and "
                    f"their {CAPTIONS_FILE}.")
  entries: dict[str, tuple[list[str], list[str]]] = {}
  try:
    with open(path, encoding="utf-8") as f:
      for line, text in enumerate(f, 1):
        if text.strip():
          file, captions = _parse_line(text, line)
          held = entries.setdefault(os.path.normpath(file), ([], []))
          held[0].extend(captions)
          held[1].extend([f"{CAPTIONS_FILE} line {line}"] * len(captions))
  except FileNotFoundError:
    raise UserError(f"{folder} has no {CAPTIONS_FILE}: write one line per image (or per caption), e.g. "
                    f'{{"file": "0001.png", "caption": "a red circle"}} (README, "Train on your own '
                    f'captions").') from None
  except UnicodeDecodeError as e:
    raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8.") from None
  except OSError as e:
    raise UserError(f"Cannot read {path}: {e.strerror}.") from None
  if not entries:
    raise UserError(f"{path} lists no images; write one JSON line per image.")
  return [_Entry(file, tuple(c), tuple(o)) for file, (c, o) in entries.items()]


def _image_channels(mode: str) -> int:
  return 1 if mode in _GREY_MODES else 3


def resize_and_crop(image, size: int) -> np.ndarray:
  """A PIL image, its shorter side resized to `size` (bicubic, antialiased when shrinking, as PIL does) and
  centre-cropped to size x size, as uint8 [size, size, C]."""
  from PIL import Image
  w, h = image.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_w, new_h) != (w, h):
    image = image.resize((new_w, new_h), Image.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  array = np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
  return array.reshape(size, size, -1)


def _read_image(folder: str, entry: _Entry, channels: int):
  """(uint8 [H, W, C] of the image's own size, its channel count); a UserError naming the file and line."""
  from PIL import Image, UnidentifiedImageError
  path = os.path.join(folder, entry.file)
  try:
    with Image.open(path) as image:
      image.load()
      own = _image_channels(image.mode)
      return image.convert("L" if channels == 1 else "RGB"), own
  except FileNotFoundError:
    raise UserError(f"{entry.origins[0]}: {entry.file} does not exist in {folder}.") from None
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"{entry.origins[0]}: {entry.file} cannot be read as an image ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}). Replace it or remove its line.") from None


def _cache_key(folder: str, entries: Sequence[_Entry], image_size: int, channels: int) -> str:
  digest = hashlib.sha256(f"{_PREPARED_FORMAT} {image_size} {channels}\n".encode())
  with open(os.path.join(folder, CAPTIONS_FILE), "rb") as f:
    digest.update(hashlib.sha256(f.read()).digest())
  for entry in entries:
    try:
      stat = os.stat(os.path.join(folder, entry.file))
    except FileNotFoundError:
      raise UserError(f"{entry.origins[0]}: {entry.file} does not exist in {folder}.") from None
    digest.update(f"{entry.file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:32]


def _write_prepared(folder: str, entries: Sequence[_Entry], image_size: int, channels: int, path: str) -> None:
  """Every image, checked, resized and cropped, streamed into the .npy file `path` (written under a temporary
  name and renamed, so an interrupted preparation leaves nothing a later run would read)."""
  shape = (len(entries), image_size, image_size, channels)
  tmp = f"{path}.tmp-{os.getpid()}"
  first: Optional[tuple[_Entry, int]] = None
  try:
    with open(tmp, "wb") as f:
      np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
      for entry in entries:
        image, own = _read_image(folder, entry, channels)
        if first is None:
          first = (entry, own)
          if own != channels:
            raise UserError(f"The images in {folder} have {own} channel(s) ({entry.file}, {entry.origins[0]}) but "
                            f"config.data.channels is {channels}; set --config.data.channels={own}.")
        elif own != first[1]:
          kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
          raise UserError(f"{entry.origins[0]}: {entry.file} is {kinds[own]} but {first[0].file} "
                          f"({first[0].origins[0]}) is {kinds[first[1]]}; a folder holds one kind. Convert the "
                          f"images to one mode (PIL: Image.open(p).convert('{'RGB' if first[1] == 3 else 'L'}')).")
        f.write(resize_and_crop(image, image_size).tobytes())
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(f"Cannot write the prepared images to {path}: {e.strerror}. Set GLIDE_CACHE_DIR to a "
                    f"writable directory with room for {np.prod(shape):,} bytes.") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def prepared_folder_images(folder: str, entries: Sequence[_Entry], image_size: int, channels: int,
                           verbose: bool = True) -> np.ndarray:
  """The folder's images uint8 [N, size, size, C] as a read-only memory map, prepared on first use."""
  directory = os.path.join(cache_root(), "caption_folders", _cache_key(folder, entries, image_size, channels))
  path = os.path.join(directory, "images.npy")
  if not os.path.isfile(path):
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise UserError(f"Cannot create the cache directory {directory}: {e.strerror}. Set GLIDE_CACHE_DIR to a "
                      f"writable directory.") from None
    if verbose:
      print(f"Preparing the {len(entries)} images of {folder} at {image_size}x{image_size} into {path} (once).",
            flush=True)
    _write_prepared(folder, entries, image_size, channels, path)
  return np.load(path, mmap_mode="r")


def load_folder(folder: str, split: str, image_size: int, channels: int, verbose: bool = True) -> CaptionDataset:
  """The `split` ("train", or a slice of it) of a caption folder."""
  folder = os.path.abspath(os.path.expanduser(folder))
  entries = read_captions_file(folder)
  start, stop = split_range(split, len(entries), ("train",), f"the caption folder {folder}")
  images = prepared_folder_images(folder, entries, image_size, channels, verbose)
  chosen = entries[start:stop]
  return CaptionDataset(images[start:stop], tuple(e.captions for e in chosen), tuple(e.origins for e in chosen))


# --- The TFDS source -------------------------------------------------------------------------------------


def _feature(example: dict, path: str) -> Any:
  value = example
  for key in path.split("/"):
    value = value[key]
  return value


def texts_of(value: Any) -> tuple[str, ...]:
  """A TFDS text feature's value (bytes or str, or a sequence of them) as stripped strings."""
  if isinstance(value, (bytes, str, np.bytes_, np.str_)):
    value = [value]
  texts = [v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in np.asarray(value).ravel()]
  return tuple(" ".join(t.split()) for t in texts)


def tfds_captions(examples: Sequence[dict], name: str, split: str, image_feature: str, caption_feature: str,
                  image_size: int) -> CaptionDataset:
  """Image–caption pairs from a TFDS split's examples: every image resized and centre-cropped to image_size."""
  from PIL import Image
  images, captions, origins = [], [], []
  for i, example in enumerate(examples):
    where = f"{name} split {split!r} example {i}"
    try:
      image, text = _feature(example, image_feature), _feature(example, caption_feature)
    except KeyError as e:
      raise UserError(f"{where} has no feature {e.args[0]!r} (config.data.image_feature = {image_feature!r}, "
                      f"config.data.caption_feature = {caption_feature!r}); its features are "
                      f"{sorted(example)}.") from None
    texts = tuple(t for t in texts_of(text) if t)
    if not texts:
      raise UserError(f"{where} has no caption in {caption_feature!r} (empty text); remove it from the split.")
    image = np.asarray(image, np.uint8)
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    images.append(resize_and_crop(pil, image_size))
    captions.append(texts)
    origins.append((where,) * len(texts))
  return CaptionDataset(np.stack(images), tuple(captions), tuple(origins))


def check_caption_lengths(dataset: CaptionDataset, encode, text_ctx: int, field: str = "model.text_ctx") -> None:
  """A UserError naming the first caption whose tokens do not fit the model's text context."""
  for captions, origins in zip(dataset.captions, dataset.origins):
    for caption, origin in zip(captions, origins):
      n = len(encode(caption))
      if n > text_ctx:
        raise UserError(f"{origin}: the caption {caption[:60]!r} is {n} tokens, longer than the text context of "
                        f"{text_ctx} (config.{field}); shorten it or raise {field}.")
