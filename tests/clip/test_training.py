"""--mode=train_clip: the contrastive loss, CLIP batches as a pure function of (seed, step), a run that resumes
exactly as it would have continued, its zero-shot report, and the settings it refuses."""

import json
import os

import numpy as np
import pytest

from glide_jax.clip.experiment import ClipExperiment
from glide_jax.clip.tokenizer import EOT_ID, SOT_ID
from glide_jax.clip.training import contrastive_loss
from glide_jax.errors import UserError
from glide_jax.modes.train_clip import run as train_clip
from helpers.runs import tiny_clip_config
from helpers.trees import assert_trees_equal


def test_contrastive_loss_matches_a_numpy_reference():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 6)).astype(np.float32) * 3
  group = np.array([0, 1, 0, 2, 1, 0], np.int32)
  same = (group[:, None] == group[None, :]).astype(np.float64)

  def cross_entropy(rows, targets):
    log_p = rows - np.log(np.sum(np.exp(rows), axis=1, keepdims=True))
    return -np.mean(np.sum(targets * log_p, axis=1))

  want = 0.5 * (cross_entropy(logits, same / same.sum(1, keepdims=True))
                + cross_entropy(logits.T, same.T / same.sum(0)[:, None]))
  loss, accuracy = contrastive_loss(logits, group)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(accuracy) == pytest.approx(np.mean(same[np.arange(6), np.argmax(logits, axis=1)]))
  # Logits that favour exactly each row's group reach the floor log(#positives) and every image is a hit.
  perfect, hits = contrastive_loss(np.where(same > 0, 50.0, -50.0).astype(np.float32), group)
  np.testing.assert_allclose(float(perfect), np.mean(np.log(same.sum(1))), rtol=1e-5)
  assert float(hits) == 1.0


def test_clip_batches_are_pure_in_seed_and_step_and_grouped_by_class():
  exp = ClipExperiment(tiny_clip_config())
  source = exp.batch_source()
  batch, again = source(3), exp.batch_source()(3)
  for key in batch:
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(source(4)["images"], batch["images"])
  labels = source.dataset.labels[source.global_indices(3)]
  np.testing.assert_array_equal(batch["group"], labels)  # "seven" and "7" describe the same images.
  rows = np.arange(len(labels))
  assert np.all(batch["tokens"][:, 0] == SOT_ID) and np.all(batch["tokens"][rows, batch["text_len"] - 1] == EOT_ID)
  assert batch["tokens"].shape == (16, 8) and batch["images"].shape == (16, 16, 16, 1)


def test_a_resumed_clip_run_continues_exactly(tiny_clip_run, tmp_path):
  config, straight = tiny_clip_run
  workdir = str(tmp_path / "resumed")
  train_clip(tiny_clip_config(num_steps=2), workdir)
  train_clip(tiny_clip_config(num_steps=4), workdir)
  exp, done = ClipExperiment(config, workdir), ClipExperiment(config, straight)
  for use_ema in (True, False):
    assert_trees_equal(exp.load_params(use_ema)[0], done.load_params(use_ema)[0])
  assert sorted(os.listdir(os.path.join(workdir, "clip_checkpoints"))) == ["2", "4"]


def test_a_finished_run_reports_its_zero_shot_accuracy(tiny_clip_run):
  config, workdir = tiny_clip_run
  with open(os.path.join(workdir, "zero_shot.json")) as f:
    report = json.load(f)
  assert report["split"] == "test[:256]" and report["images"] == 256 and report["prompts_per_class"] == 2
  accuracy = report["accuracy_by_timestep"]
  assert list(accuracy) == ["0", "25", "50", "75"]  # t = 0, T/4, T/2, 3T/4 of the tiny T = 100.
  assert all(0.0 <= a <= 1.0 and a * 256 == round(a * 256) for a in accuracy.values())


def test_settings_a_clip_run_cannot_train_with_are_refused(tmp_path):
  with pytest.raises(UserError, match="cannot be split into microbatches; set it to 0"):
    train_clip(tiny_clip_config(microbatch_size=8), str(tmp_path / "a"))
  assert not os.path.exists(tmp_path / "a")
  train_clip(tiny_clip_config(num_steps=2), str(tmp_path / "b"))
  other = tiny_clip_config()
  other.clip.embed_dim = 32
  with pytest.raises(UserError, match="has another model config: clip.embed_dim: 16 in the checkpoint, 32 now"):
    train_clip(other, str(tmp_path / "b"))
