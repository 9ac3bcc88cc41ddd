"""The evaluation classifier: it learns MNIST on a small slice, its outputs, its cache, and its config."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from glide_jax import data as data_lib
from glide_jax.config import validate_config
from glide_jax.errors import ConfigError, UserError
from glide_jax.evaluation import classifier as clf
from glide_jax.evaluation import classifier_cache as cache
from glide_jax.modes import train_classifier as train_classifier_mode
from helpers.runs import main_cmd, main_env, main_server

TRAIN_SPLIT, TEST_SPLIT, STEPS = "train[:1024]", "test[:512]", 60


def small_config(classifier_dir):
  config = tiny.get_config()  # 16x16 images.
  config.data.test_split = TEST_SPLIT
  config.eval.classifier_dir = str(classifier_dir)
  config.eval.classifier_train_split = TRAIN_SPLIT
  config.eval.classifier_steps = STEPS
  config.eval.classifier_batch_size = 64
  return config


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  """A classifier trained by get_or_train_classifier into an empty cache directory."""
  directory = tmp_path_factory.mktemp("classifier")
  config = small_config(directory)
  trained = cache.get_or_train_classifier(config, verbose=False)
  return config, trained


def test_trains_well_above_chance_on_a_slice(cached):
  config, trained = cached
  test = data_lib.load_dataset(config.data, TEST_SPLIT)
  # 60 steps of 64 images: far from the real classifier's 99%, far above chance (10%).
  assert trained.test_accuracy > 0.6
  # The recorded accuracy is the one its parameters give on the test slice.
  assert clf.accuracy(trained.params, test.images, test.labels) == pytest.approx(trained.test_accuracy, abs=1e-9)


def test_features_and_logits(cached):
  config, trained = cached
  test = data_lib.load_dataset(config.data, TEST_SPLIT)
  images = test.images[:37]
  feats, logits = clf.features(trained.params, images), clf.logits(trained.params, images)
  assert feats.shape == (37, clf.FEATURE_DIM) and logits.shape == (37, 10)
  assert np.all(feats >= 0) and np.any(feats > 0)  # ReLU features, not all dead.
  # The logits are the head applied to the features.
  head = trained.params["head"]
  np.testing.assert_allclose(logits, feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), atol=1e-4)
  # uint8 images and the same images in [-1, 1] agree; padding the last batch changes nothing.
  np.testing.assert_allclose(clf.features(trained.params, data_lib.to_model_range(images)), feats, atol=1e-5)
  np.testing.assert_allclose(clf.features(trained.params, images, batch_size=10), feats, atol=1e-5)
  # Different digits give different features.
  assert np.linalg.norm(feats[0] - feats[1]) > 1e-3


def test_cache_files_and_reuse(cached, monkeypatch):
  config, trained = cached
  directory = config.eval.classifier_dir
  assert sorted(os.listdir(directory)) == [cache.INFO_FILE, cache.PARAMS_FILE]
  with open(os.path.join(directory, cache.INFO_FILE)) as f:
    info = json.load(f)
  assert info["dataset"] == "mnist" and info["image_size"] == 16 and info["channels"] == 1
  assert info["train_split"] == TRAIN_SPLIT and info["test_split"] == TEST_SPLIT and info["steps"] == STEPS
  assert info["test_accuracy"] == trained.test_accuracy and info["seconds"] > 0

  def no_training(*args, **kwargs):
    raise AssertionError("the cached classifier should have been used")

  monkeypatch.setattr(clf, "train_classifier", no_training)
  again = cache.get_or_train_classifier(config, verbose=False)
  assert again.info == trained.info
  for a, b in zip(jax.tree_util.tree_leaves(again.params), jax.tree_util.tree_leaves(trained.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cache_for_another_image_size_or_damaged_is_a_user_error(cached, tmp_path):
  config, _ = cached
  other = small_config(config.eval.classifier_dir)
  other.data.image_size = 32
  with pytest.raises(UserError, match="image_size: 16 there, 32 now"):
    cache.get_or_train_classifier(other, verbose=False)
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in (cache.INFO_FILE, cache.PARAMS_FILE):
    with open(os.path.join(config.eval.classifier_dir, name), "rb") as f:
      (broken / name).write_bytes(f.read())
  (broken / cache.PARAMS_FILE).write_bytes(b"\x00not msgpack")
  with pytest.raises(UserError, match="cannot be read|do not fit"):
    cache.load_classifier(small_config(broken))


def _copy_of_cache(config, directory):
  directory.mkdir()
  for name in (cache.INFO_FILE, cache.PARAMS_FILE):
    with open(os.path.join(config.eval.classifier_dir, name), "rb") as f:
      (directory / name).write_bytes(f.read())
  return small_config(directory)


def test_a_cached_classifier_too_weak_to_score_is_refused_saying_how_to_replace_it(cached, tmp_path):
  config, _ = cached
  weak = _copy_of_cache(config, tmp_path / "weak")
  info_path = tmp_path / "weak" / cache.INFO_FILE
  info = json.loads(info_path.read_text())
  info["test_accuracy"] = 0.086
  info_path.write_text(json.dumps(info))
  with pytest.raises(UserError, match=r"classifies 8\.6% of the test images right \(chance: 10%\), too few to score "
                                      r"samples\. Train one in its place with more steps than its 60: python main\.py "
                                      r"--mode=train_classifier"):
    cache.get_or_train_classifier(weak, verbose=False)


def test_train_classifier_mode_replaces_a_cache_trained_with_other_settings(cached, tmp_path, monkeypatch, capsys):
  config, trained = cached
  other = _copy_of_cache(config, tmp_path / "copy")
  other.eval.classifier_steps = STEPS * 10
  calls = []

  def fake_training(data_config, seed, steps, **kwargs):
    calls.append(steps)
    return trained.params, 0.95

  monkeypatch.setattr(cache, "train_classifier", fake_training)
  train_classifier_mode.run(other)  # Other steps than the cache's: trained in its place.
  assert calls == [STEPS * 10]
  assert "trained with other settings (steps: 60 there, 600 now): training one with these in its place" in (
      capsys.readouterr().out)
  with open(tmp_path / "copy" / cache.INFO_FILE) as f:
    assert json.load(f)["steps"] == STEPS * 10
  train_classifier_mode.run(other)  # Now the cache has these settings: reused.
  assert calls == [STEPS * 10]
  # Evaluation uses whatever the cache holds, whatever its own settings (the cache is shared).
  other.eval.classifier_steps = 1
  assert cache.get_or_train_classifier(other, verbose=False).info["steps"] == STEPS * 10 and len(calls) == 1


def test_cache_directory_resolution(monkeypatch, tmp_path):
  config = tiny.get_config()
  monkeypatch.delenv("GLIDE_CACHE_DIR", raising=False)
  assert cache.cache_dir(config) == os.path.expanduser("~/.cache/glide_jax/classifiers/mnist_16px")
  monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path))
  assert cache.cache_dir(config) == str(tmp_path / "classifiers" / "mnist_16px")
  config.data.name = "emnist/mnist"
  assert cache.cache_dir(config) == str(tmp_path / "classifiers" / "emnist_mnist_16px")
  config.eval.classifier_dir = str(tmp_path / "mine")
  assert cache.cache_dir(config) == str(tmp_path / "mine")
  assert cache.load_classifier(config) is None  # Nothing cached there yet.


def test_shift_augmentation_translates_within_range():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype(np.float32))
  np.testing.assert_array_equal(clf._shift_augment(jax.random.key(0), x, 0), x)
  shifted = np.asarray(clf._shift_augment(jax.random.key(1), x, 1))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  offsets = []
  for i in range(8):
    matches = [(dy, dx) for dy in range(3) for dx in range(3)
               if np.array_equal(shifted[i], padded[i, dy:dy + 6, dx:dx + 6])]
    assert matches, f"image {i} is not a translate of its input by at most one pixel"
    offsets.append(matches[0])
  assert len(set(offsets)) > 1  # Each image gets its own shift.


@pytest.mark.parametrize("field,value", [
    ("eval.samples_per_digit", 1), ("eval.batch_size", 0), ("eval.classifier_steps", 0),
    ("eval.classifier_batch_size", 0), ("eval.classifier_learning_rate", 0.0),
    ("eval.classifier_learning_rate", float("inf")), ("eval.classifier_train_split", ""),
])
def test_invalid_eval_config_names_the_field(field, value):
  config = tiny.get_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=f"config.{field} = "):
    validate_config(config)


def test_eval_mode_without_checkpoint_is_a_user_error(tmp_path):
  """main.py dispatches --mode=eval; no checkpoint → one message, exit code 2, no classifier trained."""
  env = dict(main_env(), GLIDE_CACHE_DIR=str(tmp_path / "cache"))
  proc = main_server().run(main_cmd(tmp_path, mode="eval")[2:], env=env)
  assert proc.returncode == 2, proc.stderr
  assert "No checkpoint in" in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "cache")


def test_a_classifier_of_one_step_trains(tmp_path):
  """A schedule with no room for warm-up and decay (1 step) still trains, rather than failing in optax."""
  config = small_config(tmp_path)
  params, test_accuracy = clf.train_classifier(config.data, seed=0, steps=1, batch_size=64, train_split=TRAIN_SPLIT,
                                               test_split=TEST_SPLIT, verbose=False)
  assert 0.0 <= test_accuracy <= 1.0
  assert params["head"]["kernel"].shape == (clf.FEATURE_DIM, 10)


def test_a_single_training_step_works(tmp_path):
  """classifier_steps=1 (no warm-up, one cosine step) used to fail in optax after the data was loaded."""
  config = small_config(tmp_path / "one_step")
  config.eval.classifier_steps = 1
  trained = cache.get_or_train_classifier(config, verbose=False)
  assert 0.0 <= trained.test_accuracy <= 1.0
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(trained.params))


def test_the_shipped_mnist_evaluator_scores_without_training(monkeypatch, tmp_path, capsys):
  """MNIST at 32x32 is scored by the evaluator in the package (the same weights on every machine): nothing is
  trained or cached, it reads MNIST's test digits as its record says, and either switch turns it off."""
  from configs import mnist_cpu
  config = mnist_cpu.get_config()
  monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(cache, "train_classifier", lambda *a, **k: pytest.fail("trained instead of the shipped one"))
  shipped = cache.get_or_train_classifier(config)
  assert shipped.directory == os.path.join(cache.SHIPPED_ROOT, "mnist_32px") and os.path.isdir(shipped.directory)
  assert "Scoring with the evaluator shipped for mnist at 32x32 (test accuracy 0.9926" in capsys.readouterr().out
  assert shipped.info["steps"] == 1000 and "train_classifier" in shipped.info["command"]
  test = data_lib.load_dataset(config.data, "test[:1000]")
  assert clf.accuracy(shipped.params, test.images, test.labels) >= 0.985
  assert not os.path.exists(tmp_path / "cache")
  # Asked not to, or given a directory, it is not used; another image size has no shipped evaluator.
  for change in ({"shipped_classifier": False}, {"classifier_dir": str(tmp_path / "mine")}):
    other = mnist_cpu.get_config()
    other.eval.update(change)
    assert cache.shipped_classifier(other) is None
  other = mnist_cpu.get_config()
  other.data.image_size = 16
  assert cache.shipped_dir(other.data) is None and cache.shipped_classifier(other) is None


def test_train_classifier_mode_says_that_eval_keeps_the_shipped_evaluator(cached, monkeypatch, capsys):
  config, trained = cached
  monkeypatch.setattr(train_classifier_mode, "get_or_train_classifier", lambda *a, **k: trained)
  train_classifier_mode.run(config)
  assert "Note:" not in capsys.readouterr().out  # No evaluator is shipped for 16x16.
  monkeypatch.setattr(train_classifier_mode, "shipped_classifier", lambda config: trained)
  assert train_classifier_mode.run(config) is trained
  assert "Note: --mode=eval scores with the evaluator shipped for this dataset and size; add " \
         "--config.eval.shipped_classifier=False" in capsys.readouterr().out
