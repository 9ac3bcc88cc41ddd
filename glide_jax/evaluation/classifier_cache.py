"""The evaluation classifier: shipped in the package for MNIST at 32x32, else trained once per (dataset, image
size) and cached on disk.

`params.msgpack` (flax.serialization) and `classifier.json` (test accuracy, dataset, image size,
channels, splits, steps, seconds) live in config.eval.classifier_dir if set; else, with
config.eval.shipped_classifier (the default), in the package's `evaluators/<dataset>_<size>px` when it has one,
so that every machine scores samples with the same weights; else in $GLIDE_CACHE_DIR/classifiers/<dataset>_<size>px
(default ~/.cache/glide_jax/...). `python main.py --mode=train_classifier` fills the cache; `--mode=eval` trains
it on first use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from glide_jax.errors import UserError
from glide_jax.evaluation.classifier import Classifier, features, train_classifier
from glide_jax.runtime import cache_root

PARAMS_FILE = "params.msgpack"
INFO_FILE = "classifier.json"
SHIPPED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluators")


def _dir_name(data_config: ml_collections.ConfigDict) -> str:
  return f"{data_config.name.replace('/', '_')}_{data_config.image_size}px"


def shipped_dir(data_config: ml_collections.ConfigDict) -> Optional[str]:
  """The package's evaluator for config.data's dataset and image size, or None if it ships none."""
  directory = os.path.join(SHIPPED_ROOT, _dir_name(data_config))
  return directory if os.path.exists(os.path.join(directory, PARAMS_FILE)) else None


def default_cache_dir(data_config: ml_collections.ConfigDict) -> str:
  """$GLIDE_CACHE_DIR (else ~/.cache/glide_jax)/classifiers/<dataset>_<size>px."""
  return os.path.join(cache_root(), "classifiers", _dir_name(data_config))


def cache_dir(config: ml_collections.ConfigDict) -> str:
  """config.eval.classifier_dir if set, else the default cache directory for the dataset and image size."""
  if config.eval.classifier_dir:
    return os.path.abspath(os.path.expanduser(config.eval.classifier_dir))
  return default_cache_dir(config.data)


@dataclasses.dataclass
class TrainedClassifier:
  """Parameters and the record of how they were made (classifier.json)."""

  params: Any
  info: dict
  directory: str

  @property
  def test_accuracy(self) -> float:
    return float(self.info["test_accuracy"])

  def features(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return features(self.params, images, batch_size)


def save_classifier(directory: str, params: Any, info: dict) -> None:
  """Writes params.msgpack and classifier.json (each to a temporary file first, then renamed)."""
  try:
    os.makedirs(directory, exist_ok=True)
    for name, content, mode in ((PARAMS_FILE, flax.serialization.to_bytes(params), "wb"),
                                (INFO_FILE, json.dumps(info, indent=2) + "\n", "w")):
      tmp = os.path.join(directory, f".{name}.tmp")
      with open(tmp, mode) as f:
        f.write(content)
      os.replace(tmp, os.path.join(directory, name))
  except OSError as e:
    raise UserError(f"Cannot write the classifier cache in {directory}: {e.strerror}. Set "
                    f"--config.eval.classifier_dir or $GLIDE_CACHE_DIR to a writable directory.") from None


def _recipe(config: ml_collections.ConfigDict) -> dict:
  """How config.eval trains a classifier, as classifier.json records it."""
  e = config.eval
  return {"train_split": e.classifier_train_split, "test_split": config.data.test_split,
          "steps": int(e.classifier_steps), "batch_size": int(e.classifier_batch_size),
          "learning_rate": float(e.classifier_learning_rate), "augment": bool(e.classifier_augment),
          "seed": int(config.seed)}


def useful_accuracy(num_classes: int) -> float:
  """The test accuracy below which a classifier cannot score samples: three times chance."""
  return min(1.0, 3.0 / num_classes)


def _expected_info(config: ml_collections.ConfigDict) -> dict:
  return {"dataset": config.data.name, "image_size": int(config.data.image_size),
          "channels": int(config.data.channels)}


def load_classifier(config: ml_collections.ConfigDict, directory: Optional[str] = None) -> Optional[TrainedClassifier]:
  """The cached classifier for config.data, or None if the directory holds none.

  A cache made for another dataset, image size or channel count, or an unreadable one, is a UserError.
  """
  directory = directory or cache_dir(config)
  params_path, info_path = os.path.join(directory, PARAMS_FILE), os.path.join(directory, INFO_FILE)
  if not (os.path.exists(params_path) and os.path.exists(info_path)):
    return None
  fix = f"Delete {directory} to retrain it, or point --config.eval.classifier_dir elsewhere."
  try:
    with open(info_path) as f:
      info = json.load(f)
    with open(params_path, "rb") as f:
      params = flax.serialization.msgpack_restore(f.read())
  except (OSError, ValueError) as e:
    raise UserError(f"The cached classifier in {directory} cannot be read ({e}). {fix}") from None
  if not isinstance(info, dict):
    raise UserError(f"The cached classifier record {info_path} is not a JSON object. {fix}")
  expected = _expected_info(config)
  differing = {k: (info.get(k), v) for k, v in expected.items() if info.get(k) != v}
  if differing:
    raise UserError(f"The cached classifier in {directory} was trained for another dataset or image shape ("
                    + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differing.items()) + f"). {fix}")
  try:
    num_classes = int(params["head"]["kernel"].shape[-1])
    size, channels = expected["image_size"], expected["channels"]
    shapes = jax.eval_shape(Classifier(num_classes=num_classes).init, jax.random.key(0),
                            jnp.zeros((1, size, size, channels)))["params"]
    same = jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params) and all(
        a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(params)))
  except (KeyError, TypeError, AttributeError, IndexError):
    same = False
  if not same:
    raise UserError(f"The cached classifier parameters in {params_path} do not fit the classifier network. {fix}")
  return TrainedClassifier(params=params, info=info, directory=directory)


def shipped_classifier(config: ml_collections.ConfigDict) -> Optional[TrainedClassifier]:
  """The package's evaluator for config.data, when config.eval asks for it (shipped_classifier, no
  classifier_dir) and the package has one; else None."""
  directory = shipped_dir(config.data)
  if config.eval.classifier_dir or not config.eval.shipped_classifier or directory is None:
    return None
  return load_classifier(config, directory)


def get_or_train_classifier(config: ml_collections.ConfigDict, verbose: bool = True,
                            retrain_if_other_recipe: bool = False) -> TrainedClassifier:
  """The classifier that scores config.data's samples: the shipped one (`shipped_classifier`) unless
  `retrain_if_other_recipe`, else the cached one; trains and caches it if there is none (or, with
  `retrain_if_other_recipe`, if config.eval asks for other training settings than the cache's).

  A cached classifier too weak to score samples (`useful_accuracy`) is a UserError saying how to replace it.
  """
  shipped = None if retrain_if_other_recipe else shipped_classifier(config)
  if shipped is not None:
    if verbose:
      print(f"Scoring with the evaluator shipped for {config.data.name} at {config.data.image_size}x"
            f"{config.data.image_size} (test accuracy {shipped.test_accuracy:.4f}; "
            f"--config.eval.shipped_classifier=False scores with a classifier trained here).", flush=True)
    return shipped
  directory = cache_dir(config)
  cached = load_classifier(config, directory)
  changed = [] if cached is None else [f"{k}: {cached.info.get(k)!r} there, {v!r} now"
                                       for k, v in _recipe(config).items() if cached.info.get(k) != v]
  if cached is not None and not (retrain_if_other_recipe and changed):
    num_classes = int(cached.params["head"]["kernel"].shape[-1])
    if cached.test_accuracy < useful_accuracy(num_classes):
      raise UserError(
          f"The cached classifier in {directory} classifies {cached.test_accuracy:.1%} of the test images right "
          f"(chance: {1 / num_classes:.0%}), too few to score samples. Train one in its place with more steps "
          f"than its {cached.info.get('steps')}: python main.py --mode=train_classifier --config=... "
          f"--config.eval.classifier_steps=N (or delete {directory}).")
    if verbose:
      print(f"Using the cached classifier in {directory} (test accuracy "
            f"{cached.test_accuracy:.4f}).", flush=True)
      if cached.test_accuracy < 0.99:
        print(f"warning: the cached classifier's test accuracy is {cached.test_accuracy:.4f} (< 0.99); its prompt "
              f"accuracy and FID are rougher. --mode=train_classifier with more --config.eval.classifier_steps "
              f"replaces it.", flush=True)
    return cached
  e = config.eval
  if verbose:
    print(f"The cached classifier in {directory} was trained with other settings ({'; '.join(changed)}): "
          f"training one with these in its place." if cached is not None else
          f"No cached classifier in {directory}: training one.", flush=True)
  start = time.perf_counter()
  params, test_accuracy = train_classifier(
      config.data, seed=config.seed, steps=e.classifier_steps, batch_size=e.classifier_batch_size,
      learning_rate=e.classifier_learning_rate, train_split=e.classifier_train_split,
      test_split=config.data.test_split, augment=e.classifier_augment, verbose=verbose)
  info = dict(_expected_info(config), test_accuracy=test_accuracy, **_recipe(config),
              seconds=round(time.perf_counter() - start, 1), jax_backend=jax.default_backend())
  if jax.process_index() == 0:
    save_classifier(directory, params, info)
    if verbose:
      print(f"Saved the classifier to {directory}.", flush=True)
  if test_accuracy < 0.99 and verbose:
    print(f"warning: the classifier's test accuracy is {test_accuracy:.4f} (< 0.99); its prompt accuracy and "
          f"FID are rougher. More --config.eval.classifier_steps helps.", flush=True)
  return TrainedClassifier(params=params, info=info, directory=directory)
