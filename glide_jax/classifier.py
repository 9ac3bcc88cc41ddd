"""A small CNN classifier of the dataset's classes: the instrument of `--mode=eval`.

Its argmax says which class a sample shows (prompt accuracy) and its penultimate layer (128 features)
is the embedding of the classifier FID and of the diversity figure, in place of Inception for
MNIST-sized images. It works at config.data.image_size and config.data.channels, on images in [−1, 1].

Trained once per (dataset, image size) and cached: `params.msgpack` (flax.serialization) and
`classifier.json` (test accuracy, dataset, image size, channels, splits, steps, seconds) in
config.eval.classifier_dir if set, else $GLIDE_CACHE_DIR/classifiers/<dataset>_<size>px, else
~/.cache/glide_jax/classifiers/<dataset>_<size>px. `python main.py --mode=train_classifier` fills it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from glide_jax import data as data_lib
from glide_jax import sharding as sharding_lib
from glide_jax.errors import UserError

PARAMS_FILE = "params.msgpack"
INFO_FILE = "classifier.json"
FEATURE_DIM = 128
WIDTHS = (32, 64, 64)


class Classifier(nn.Module):
  """Three conv3x3-ReLU-maxpool stages (32, 64, 64 channels), a 128-wide ReLU layer (the features), logits.

  Each stage halves the resolution first thing after its convolution, so a 32x32 image costs about
  15 MFLOPs forward: a 2-core CPU trains it to 99% test accuracy on MNIST in a few minutes.
  """

  num_classes: int = 10
  widths: Sequence[int] = WIDTHS
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, H, W, C] in [−1, 1] → (features [B, feature_dim], logits [B, num_classes])."""
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.feature_dim, name="penultimate")(x))
    return features, nn.Dense(self.num_classes, name="head")(features)


def _model_for(params: Any) -> Classifier:
  return Classifier(num_classes=int(params["head"]["kernel"].shape[-1]))


def _as_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] → [−1, 1]; float images are taken to be in [−1, 1] already."""
  images = np.asarray(images)
  return data_lib.to_model_range(images) if images.dtype == np.uint8 else images.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted_apply(num_classes: int):
  model = Classifier(num_classes=num_classes)
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


def _outputs(params: Any, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """(features, logits) of uint8 or [−1, 1] images [N, H, W, C], in fixed-size batches (one compilation)."""
  model = _model_for(params)
  n = len(images)
  batch_size = max(1, min(batch_size, n))
  feats, logits = [], []
  for start in range(0, n, batch_size):
    x = _as_model_range(images[start:start + batch_size])
    m = len(x)
    if m < batch_size:  # Pad the last batch so every call has the same shape.
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - m, axis=0)])
    f, l = jax.device_get(_jitted_apply(model.num_classes)(params, jnp.asarray(x)))
    feats.append(np.asarray(f[:m], np.float64))
    logits.append(np.asarray(l[:m], np.float32))
  if not feats:
    return np.zeros((0, model.feature_dim)), np.zeros((0, model.num_classes), np.float32)
  return np.concatenate(feats), np.concatenate(logits)


def features(params: Any, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Penultimate-layer features float64 [N, 128] of uint8 or [−1, 1] images [N, H, W, C]."""
  return _outputs(params, images, batch_size)[0]


def logits(params: Any, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Class logits float32 [N, num_classes] of uint8 or [−1, 1] images [N, H, W, C]."""
  return _outputs(params, images, batch_size)[1]


def accuracy(params: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
  return float(np.mean(np.argmax(logits(params, images, batch_size), axis=-1) == np.asarray(labels)))


def _shift_augment(rng: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to ±max_shift pixels in each direction (edge padding)."""
  if max_shift <= 0:
    return x
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def make_train_step(model: Classifier, optimizer: optax.GradientTransformation, max_shift: int):
  def step(params, opt_state, images, labels, rng):
    x = _shift_augment(rng, images, max_shift)

    def loss_fn(p):
      _, out = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def train_classifier(data_config: ml_collections.ConfigDict, seed: int = 0, steps: int = 1000,
                     batch_size: int = 128, learning_rate: float = 2e-3, train_split: str = "train",
                     test_split: str = "test", augment: bool = True, log_every: int = 100,
                     verbose: bool = True) -> tuple[Any, float]:
  """Trains the classifier on train_split of config.data's dataset; returns (params, accuracy on test_split).

  Adam with a linear warm-up (5% of the steps) and a cosine decay to zero; batches are epoch-wise
  permutations of the split; `augment` shifts each training image by up to 2 pixels (1 at 16x16).
  """
  if steps < 1 or batch_size < 1 or not learning_rate > 0:
    raise UserError(f"The classifier needs steps >= 1, batch_size >= 1 and a positive learning rate "
                    f"(got {steps}, {batch_size}, {learning_rate}); see config.eval.classifier_*.")
  start_time = time.perf_counter()
  train = data_lib.load_dataset(data_config, train_split)
  test = data_lib.load_dataset(data_config, test_split)
  num_classes = len(train.class_names)
  batch_size = min(batch_size, len(train))
  devices = jax.local_devices()
  mesh = sharding_lib.make_mesh((-1, 1), devices) if batch_size % len(devices) == 0 else None
  put_batch = (lambda a: jax.device_put(a, sharding_lib.batch_sharding(mesh))) if mesh else jnp.asarray

  model = Classifier(num_classes=num_classes)
  size, channels = data_config.image_size, data_config.channels
  rng = jax.random.key(seed)
  params = model.init(jax.random.fold_in(rng, 0), jnp.zeros((1, size, size, channels)))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps, 0.0)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)
  if mesh is not None:
    params, opt_state = jax.device_put((params, opt_state), sharding_lib.replicated(mesh))
  max_shift = max(1, round(2 * size / 32)) if augment else 0
  step_fn = make_train_step(model, optimizer, max_shift)

  images = data_lib.to_model_range(train.images)
  per_epoch = len(train) // batch_size
  order = np.random.default_rng(seed)
  perm = None
  losses = []
  if verbose:
    print(f"Training the {data_config.name} classifier at {size}x{size}: {steps} steps of {batch_size} "
          f"({steps * batch_size / len(train):.2f} epochs of {train_split!r}, {len(train)} images)", flush=True)
  for step in range(steps):
    epoch, i = divmod(step, per_epoch)
    if i == 0:
      perm = order.permutation(len(train))
    idx = perm[i * batch_size:(i + 1) * batch_size]
    params, opt_state, loss = step_fn(params, opt_state, put_batch(images[idx]),
                                      put_batch(train.labels[idx]), jax.random.fold_in(rng, step + 1))
    losses.append(loss)
    if verbose and ((step + 1) % log_every == 0 or step + 1 == steps):
      recent = float(np.mean(jax.device_get(losses[-log_every:])))
      print(f"  step {step + 1}/{steps}  loss {recent:.4f}  ({time.perf_counter() - start_time:.0f}s)", flush=True)
  params = jax.device_get(params)
  test_accuracy = accuracy(params, test.images, test.labels)
  if verbose:
    print(f"Classifier test accuracy on {test_split!r} ({len(test)} images): {test_accuracy:.4f} "
          f"after {time.perf_counter() - start_time:.0f}s", flush=True)
  return params, test_accuracy


def default_cache_dir(data_config: ml_collections.ConfigDict) -> str:
  """$GLIDE_CACHE_DIR (else ~/.cache/glide_jax)/classifiers/<dataset>_<size>px."""
  root = os.environ.get("GLIDE_CACHE_DIR") or os.path.join("~", ".cache", "glide_jax")
  name = data_config.name.replace("/", "_")
  return os.path.join(os.path.expanduser(root), "classifiers", f"{name}_{data_config.image_size}px")


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

  def logits(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return logits(self.params, images, batch_size)


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


def get_or_train_classifier(config: ml_collections.ConfigDict, verbose: bool = True) -> TrainedClassifier:
  """The cached classifier for config.data's dataset and image size; trains and caches it if there is none."""
  directory = cache_dir(config)
  cached = load_classifier(config, directory)
  if cached is not None:
    if verbose:
      print(f"Using the cached classifier in {directory} (test accuracy "
            f"{cached.test_accuracy:.4f}).", flush=True)
    return cached
  e = config.eval
  if verbose:
    print(f"No cached classifier in {directory}: training one.", flush=True)
  start = time.perf_counter()
  params, test_accuracy = train_classifier(
      config.data, seed=config.seed, steps=e.classifier_steps, batch_size=e.classifier_batch_size,
      learning_rate=e.classifier_learning_rate, train_split=e.classifier_train_split,
      test_split=config.data.test_split, augment=e.classifier_augment, verbose=verbose)
  info = dict(_expected_info(config), test_accuracy=test_accuracy, test_split=config.data.test_split,
              train_split=e.classifier_train_split, steps=int(e.classifier_steps),
              batch_size=int(e.classifier_batch_size), learning_rate=float(e.classifier_learning_rate),
              augment=bool(e.classifier_augment), seed=int(config.seed),
              seconds=round(time.perf_counter() - start, 1), jax_backend=jax.default_backend())
  if jax.process_index() == 0:
    save_classifier(directory, params, info)
    if verbose:
      print(f"Saved the classifier to {directory}.", flush=True)
  if test_accuracy < 0.99 and verbose:
    print(f"warning: the classifier's test accuracy is {test_accuracy:.4f} (< 0.99); its prompt accuracy and "
          f"FID are rougher. More --config.eval.classifier_steps helps.", flush=True)
  return TrainedClassifier(params=params, info=info, directory=directory)
