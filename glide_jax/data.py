"""Image-and-prompt batches, as a pure function of (seed, step): TFDS classes with prompt templates, or
image–caption pairs (`caption_data`: a caption folder, or a TFDS dataset with a text feature).

A TFDS split is read once through `tfds.data_source` (no TensorFlow needed), resized and kept in memory as
uint8. Batch `step` takes its examples from an epoch-wise permutation seeded by (seed, epoch), so a
resumed run and every host see exactly the examples an uninterrupted single-host run would.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence

import numpy as np

from glide_jax import caption_data, data_prepare, scenes
from glide_jax.caption_data import CaptionDataset
from glide_jax.errors import UserError
from glide_jax.model.tokenizer import Tokenizer

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """A split in memory: images uint8 [N, H, W, C], labels int32 [N] and the class words."""

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def sample_prompts(self) -> list[str]:
    """One prompt per class (its word): what training's sample grids draw."""
    return list(self.class_names)


def resolve_data_dir(data_dir: str = "") -> str:
  """The config's data dir, else $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets)."""
  if data_dir:
    return os.path.expanduser(data_dir)
  if os.environ.get("TFDS_DATA_DIR"):
    return os.path.expanduser(os.environ["TFDS_DATA_DIR"])
  return os.path.expanduser("~/tensorflow_datasets")


def _missing_dataset_error(name: str, data_dir: str) -> UserError:
  return UserError(
      f"The TFDS dataset {name!r} was not found under {data_dir!r}, and config.data.download is off. Either "
      f"let the run prepare it there (--config.data.download=True, the default; it needs network access once), "
      f"or point TFDS at a directory that holds it prepared (it contains {name}/<version>/): set "
      f"TFDS_DATA_DIR=/path/to/tensorflow_datasets or pass --config.data.data_dir=/path/to/tensorflow_datasets.")


def _builder(name: str, data_dir: str):
  """TFDS's builder of `name`, reading the prepared dataset's metadata where data_dir holds it."""
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"TFDS has no dataset named {name!r}, and none is prepared under {data_dir!r}; check "
                    f"config.data.name (e.g. 'mnist', 'fashion_mnist', 'cifar10') and config.data.data_dir.") from None
  except Exception as e:  # A garbled dataset_info.json or features.json: protobuf's ParseError and others.
    raise _damaged_dataset_error(name, data_dir, e) from None


def prepared_builder(name: str, data_dir: str, download: bool = True, download_url: str = "",
                     checksums_file: str = ""):
  """The builder of `name` in data_dir (resolved), downloading and preparing the dataset first if it is
  missing and `download` is on."""
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  if not download:
    raise _missing_dataset_error(name, data_dir)
  data_prepare.prepare(name, data_dir, download_url, checksums_file)
  return _builder(name, data_dir)


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of bilinear resizing with half-pixel centres (PIL/torchvision for upsampling)."""
  src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  src = np.clip(src, 0, in_size - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size))
  weights[np.arange(out_size), lo] += 1 - frac
  weights[np.arange(out_size), hi] += frac
  return weights


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of uint8 [N, H, W, C] to [N, size, size, C], rounded back to uint8."""
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  rows, cols = bilinear_resize_matrix(h, size), bilinear_resize_matrix(w, size)
  out = np.empty((n, size, size, c), np.uint8)
  for start in range(0, n, 4096):
    chunk = images[start:start + 4096].astype(np.float32)
    resized = np.einsum("yh,nhwc,xw->nyxc", rows, chunk, cols, optimize=True)
    out[start:start + 4096] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
  return out


def class_words(name: str, label_names: Sequence[str]) -> tuple[str, ...]:
  """Words for prompts: digit words for digit datasets, else the TFDS label names with spaces."""
  if name in ("mnist", "kmnist", "emnist/mnist") or list(label_names) == [str(i) for i in range(10)]:
    return DIGIT_WORDS
  return tuple(n.replace("_", " ") for n in label_names)


def class_names_of(data_config) -> tuple[str, ...]:
  """The class words of config.data's dataset, from its metadata alone (no examples are read).

  The MNIST-format datasets name their classes in TFDS's code, so sampling needs no data on disk; other
  datasets learn their names when they are prepared (CIFAR-10's come from its download), so they are
  prepared first.
  """
  if is_captioned(data_config) or not data_config.name:
    return ()
  name, data_dir = data_config.name, resolve_data_dir(data_config.data_dir)
  builder = _builder(name, data_dir)
  if not builder.is_prepared() and name not in data_prepare.IDX_DATASETS:
    builder = prepared_builder(name, data_dir, data_config.download, data_config.download_url,
                               data_config.download_checksums)
  return class_words(name, builder.info.features["label"].names)


def _damaged_dataset_error(name: str, data_dir: str, error: Exception) -> UserError:
  reason = " ".join(str(error).split())[:300]
  return UserError(f"The prepared TFDS dataset {name!r} under {data_dir!r} cannot be read: its files are damaged "
                   f"({type(error).__name__}: {reason}). Nothing was written. Move {os.path.join(data_dir, name)} "
                   f"aside and run again to prepare it anew (README, 'Data: prepared on first use'), or point "
                   f"TFDS_DATA_DIR / config.data.data_dir at an intact copy.")


def _read_all(source) -> list[dict]:
  keys = list(range(len(source)))
  try:
    return source.__getitems__(keys)  # One batched read: faster than one call per example.
  except TypeError:  # A source without batched reads, e.g. tfds.testing.mock_data's.
    return [source[k] for k in keys]


def _read_split(name: str, split: str, data_dir: str) -> list[dict]:
  """Every example of a prepared TFDS split (data_dir resolved); a UserError for a bad split or damaged files."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except ValueError as e:
    raise UserError(f"Cannot read split {split!r} of {name!r}: {str(e).rstrip('.')}. Use a TFDS split such as "
                    f"'train' or 'train[:2048]' in config.data.train_split / test_split.") from None
  except Exception as e:
    raise _damaged_dataset_error(name, data_dir, e) from None
  if len(source) == 0:
    raise UserError(f"Split {split!r} of {name!r} under {data_dir!r} is empty.")
  try:
    return _read_all(source)
  except Exception as e:  # Truncated or overwritten array_record files: RuntimeError from Riegeli, and others.
    raise _damaged_dataset_error(name, data_dir, e) from None


@functools.lru_cache(maxsize=8)
def load_split(name: str, split: str, data_dir: str = "", image_size: int = 32, download: bool = True,
               download_url: str = "", checksums_file: str = "") -> ImageDataset:
  """Reads a TFDS split into memory (cached per process), resized to image_size; prepares the dataset
  first where it is missing and `download` is on."""
  data_dir = resolve_data_dir(data_dir)
  builder = prepared_builder(name, data_dir, download, download_url, checksums_file)
  examples = _read_split(name, split, data_dir)
  try:
    images = np.stack([ex["image"] for ex in examples])
    labels = np.array([ex["label"] for ex in examples], dtype=np.int32)
  except Exception as e:  # Examples that do not decode: damaged files.
    raise _damaged_dataset_error(name, data_dir, e) from None
  if images.ndim == 3:
    images = images[..., None]
  class_names = class_words(name, builder.info.features["label"].names)
  return ImageDataset(resize_images(images, image_size), labels, class_names)


def is_captioned(data_config) -> bool:
  """Whether config.data holds image–caption pairs (a caption folder or a TFDS text feature), not classes."""
  return data_config.source in ("folder", "mnist_scenes") or bool(data_config.caption_feature)


def require_classes(data_config, what: str) -> None:
  """A UserError when `what` (e.g. "--mode=eval") needs class labels and config.data has captions."""
  if is_captioned(data_config):
    source = {"folder": f"the caption folder {data_config.folder}", "mnist_scenes": "MNIST scenes"}.get(
        data_config.source, f"{data_config.name!r}'s captions ({data_config.caption_feature!r})")
    raise UserError(f"{what} scores samples with a classifier of the dataset's classes, and this config trains on "
                    f"{source}, which has none. Sample with --mode=sample and --config.sample.prompts instead.")


@functools.lru_cache(maxsize=8)
def _load_tfds_captions(name: str, split: str, data_dir: str, image_size: int, image_feature: str,
                        caption_feature: str, download: bool) -> CaptionDataset:
  data_dir = resolve_data_dir(data_dir)
  prepared_builder(name, data_dir, download)
  examples = _read_split(name, split, data_dir)
  return caption_data.tfds_captions(examples, name, split, image_feature, caption_feature, image_size)


def load_scenes(data_config, split: str) -> CaptionDataset:
  """config.data's MNIST scenes split (sliced as TFDS slices a split, e.g. "held_out[:500]"), built from the
  prepared MNIST: its training digits for the train split, its test digits for the others."""
  name = split.partition("[")[0].strip()
  if name not in scenes.SPLITS:
    caption_data.split_range(split, 1, scenes.SPLITS, "the MNIST scenes")  # Raises, naming the splits.
  s = data_config.scenes
  spec = scenes.SceneSpec(s.count if name == "train" else s.test_count, s.seed, float(s.held_out),
                          data_config.image_size)
  start, stop = caption_data.split_range(split, spec.count, scenes.SPLITS, "the MNIST scenes")
  made, _ = _made_scenes(name, spec, data_config.data_dir, data_config.download, data_config.download_url,
                         data_config.download_checksums)
  return CaptionDataset(made.images[start:stop], made.captions[start:stop], made.origins[start:stop])


@functools.lru_cache(maxsize=4)
def _made_scenes(split: str, spec: scenes.SceneSpec, data_dir: str, download: bool, download_url: str,
                 checksums: str) -> tuple[CaptionDataset, np.ndarray]:
  mnist = load_split("mnist", "train" if split == "train" else "test", data_dir, spec.image_size // scenes.GRID,
                     download, download_url, checksums)
  return scenes.make_scenes(mnist.images, mnist.labels, split, spec)


def load_dataset(data_config, split: Optional[str] = None) -> ImageDataset | CaptionDataset:
  """The train split (or `split`) that `config.data` names, checked against its channel count: classes
  (ImageDataset), or image–caption pairs (CaptionDataset) from a caption folder or a TFDS text feature."""
  split = split or data_config.train_split
  if data_config.source == "folder":
    return caption_data.load_folder(data_config.folder, split, data_config.image_size, data_config.channels)
  if data_config.source == "mnist_scenes":
    return load_scenes(data_config, split)
  if not data_config.name:
    raise UserError("config.data.name is '': this config has no dataset (a released GLIDE model is sampled and "
                    "edited, not trained or evaluated here). Give PNG paths to --mode=edit, or set "
                    "--config.data.name to a TFDS dataset.")
  if data_config.caption_feature:
    ds = _load_tfds_captions(data_config.name, split, data_config.data_dir, data_config.image_size,
                             data_config.image_feature, data_config.caption_feature, data_config.download)
  else:
    ds = load_split(data_config.name, split, data_config.data_dir, data_config.image_size, data_config.download,
                    data_config.download_url, data_config.download_checksums)
  if ds.images.shape[-1] != data_config.channels:
    raise UserError(f"{data_config.name!r} images have {ds.images.shape[-1]} channel(s) but config.data.channels "
                    f"is {data_config.channels}; set --config.data.channels={ds.images.shape[-1]}.")
  return ds


def format_prompt(template: str, label: int, class_names: Sequence[str]) -> str:
  """A template filled with {name} (the class word, e.g. "seven") and {label} (the numeral, "7")."""
  return template.format(name=class_names[label], label=label)


def prompt_table(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
  """prompts[label][template_index]."""
  return [[format_prompt(t, k, class_names) for t in templates] for k in range(len(class_names))]


def to_model_range(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → float32 [−1, 1]."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0


class BatchSource:
  """Batch `step` of a run as a pure function of (seed, step); a process takes its own slice of it.

  Each example's prompt is drawn per step as well: one of the prompt templates filled with its class, or
  one of its captions.
  """

  context_field = "model.text_ctx"  # The config field that sets text_ctx, for the error a long caption gets.

  def __init__(self, dataset: ImageDataset | CaptionDataset, tokenizer: Tokenizer, text_ctx: int,
               templates: Sequence[str], global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, composer: Optional[Callable] = None):
    if global_batch > len(dataset):
      raise UserError(f"config.train.batch_size = {global_batch} is larger than the dataset ({len(dataset)} "
                      f"examples); lower it or use a larger split.")
    if global_batch % process_count:
      raise UserError(f"config.train.batch_size = {global_batch} does not split over {process_count} processes.")
    self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
    self.composer = composer  # editing.composites.EditComposer, for a class dataset.
    self.tokenizer, self.text_ctx = tokenizer, text_ctx
    self.local_batch = global_batch // process_count
    self.local_slice = slice(process_index * self.local_batch, (process_index + 1) * self.local_batch)
    self.steps_per_epoch = len(dataset) // global_batch
    self._perm_epoch, self._perm = -1, None
    if isinstance(dataset, CaptionDataset):
      caption_data.check_caption_lengths(dataset, tokenizer.encode, text_ctx, self.context_field)
      self._num_captions = np.array([len(c) for c in dataset.captions])
      return
    self.num_templates = len(templates)
    table = prompt_table(dataset.class_names, templates)
    flat = [p for row in table for p in row]
    tokens, mask = tokenizer.tokenize_batch(flat, text_ctx)
    shape = (len(table), len(templates), text_ctx)
    self._tokens, self._mask = tokens.reshape(shape), mask.reshape(shape)

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
      self._perm_epoch = epoch
    return self._perm

  def global_indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[i * self.global_batch:(i + 1) * self.global_batch]

  def template_choices(self, step: int) -> np.ndarray:
    return np.random.default_rng([self.seed, step, 1]).integers(0, self.num_templates, self.global_batch)

  def caption_choices(self, step: int, indices: np.ndarray) -> np.ndarray:
    """Which caption of each example of batch `step` (its global `indices`) is its prompt."""
    u = np.random.default_rng([self.seed, step, 1]).random(self.global_batch)
    return np.minimum((u * self._num_captions[indices]).astype(np.int64), self._num_captions[indices] - 1)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of batch `step`: images [b,H,W,C] in [−1,1], tokens [b,L] and mask [b,L]."""
    global_idx = self.global_indices(step)
    idx, extra = global_idx[self.local_slice], {}
    # Sorted reads: a memory-mapped caption folder is read front to back, not at random.
    order = np.argsort(idx, kind="stable")
    images = np.empty((len(idx),) + self.dataset.images.shape[1:], np.uint8)
    images[order] = self.dataset.images[idx[order]]
    if isinstance(self.dataset, CaptionDataset):
      choice = self.caption_choices(step, global_idx)[self.local_slice]
      prompts = [self.dataset.captions[i][c] for i, c in zip(idx, choice)]
      tokens, mask = self.tokenizer.tokenize_batch(prompts, self.text_ctx)
    else:
      labels = self.dataset.labels[idx]
      if self.composer is not None:
        images, labels, known, composite = self.composer(step, images, labels, self.local_slice, self.global_batch)
        extra = {"known": known, "composite": composite}
      choice = self.template_choices(step)[self.local_slice]
      tokens, mask = self._tokens[labels, choice], self._mask[labels, choice]
    return {"images": to_model_range(images), "tokens": tokens, "mask": mask, **extra}
