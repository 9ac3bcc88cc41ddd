"""The evaluation samples file: plain arrays, row-aligned, read back without unpickling."""

import json
import os

import numpy as np
import pytest

from glide_jax.data import DIGIT_WORDS
from glide_jax.evaluation.samples_file import load_samples, save_samples
from helpers.paths import REPO


def test_round_trip_with_extra_rows(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
  path = str(tmp_path / "eval" / "samples.npz")
  save_samples(path, images, [0, 1, 2, 0, 1, 2], [1.5] * 3 + [2.0] * 3, ["zero", "one", "two"],
               setting={"sampler": "ddpm", "sampling_steps": 100}, method=np.array(["a"] * 6))
  saved = load_samples(path)
  assert sorted(saved) == ["class_names", "guidance_scale", "images", "method", "prompted", "setting"]
  assert json.loads(str(saved["setting"])) == {"sampler": "ddpm", "sampling_steps": 100}
  np.testing.assert_array_equal(saved["images"], images)
  assert saved["prompted"].dtype == np.int32 and saved["prompted"].tolist() == [0, 1, 2, 0, 1, 2]
  assert saved["guidance_scale"].dtype == np.float32 and saved["guidance_scale"].tolist() == [1.5] * 3 + [2.0] * 3
  assert saved["class_names"].tolist() == ["zero", "one", "two"] and saved["method"].tolist() == ["a"] * 6
  assert not any(v.dtype == object for v in saved.values())
  assert [p.name for p in (tmp_path / "eval").iterdir()] == ["samples.npz"]  # No temporary file is left.


def test_rows_must_line_up_and_images_be_uint8(tmp_path):
  images = np.zeros((3, 4, 4, 1), np.uint8)
  with pytest.raises(ValueError, match=r"prompted has \(2,\) rows, the images \(3,\)"):
    save_samples(str(tmp_path / "a.npz"), images, [0, 1], [1.0] * 3, ["zero"])
  with pytest.raises(ValueError, match=r"uint8 \[N, H, W, C\] images, got float32"):
    save_samples(str(tmp_path / "b.npz"), images.astype(np.float32), [0] * 3, [1.0] * 3, ["zero"])
  assert not list(tmp_path.iterdir())


def test_the_committed_mnist_cpu_samples_are_a_samples_file():
  """docs/eval_samples_mnist_cpu.npz, the 1,000 images of the guidance study's best setting (docs/quality.md),
  loads without pickle: 100 samples of each digit at guidance 2, and names how they were drawn."""
  path = os.path.join(REPO, "docs", "eval_samples_mnist_cpu.npz")
  assert os.path.getsize(path) <= 3_000_000
  s = load_samples(path)
  assert s["images"].shape == (1000, 32, 32, 1) and s["images"].dtype == np.uint8
  assert s["class_names"].tolist() == list(DIGIT_WORDS)
  np.testing.assert_array_equal(np.bincount(s["prompted"], minlength=10), np.full(10, 100))
  assert set(s["guidance_scale"].tolist()) == {2.0}
  setting = json.loads(str(s["setting"]))
  assert {k: setting[k] for k in ("sampler", "sampling_steps", "guidance", "guidance_scale")} == {
      "sampler": "ddpm", "sampling_steps": 100, "guidance": "classifier_free", "guidance_scale": 2.0}
