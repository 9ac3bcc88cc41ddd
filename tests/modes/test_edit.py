"""--mode=edit end to end on tiny runs: a base run edits by the replacement method, an inpainting run
fine-tuned from it (config.train.init_from) edits with its mask channels; the known pixels stay exact."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from glide_jax import data as data_lib
from glide_jax.editing.inputs import resize_bicubic
from glide_jax.errors import UserError
from glide_jax.evaluation.samples_file import load_samples
from glide_jax.modes.edit import run as edit_and_save
from glide_jax.modes.eval import run as evaluate
from glide_jax.modes.train import run as train
from helpers.runs import with_classifier


def tiny_config(**train):
  config = tiny.get_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  for key, value in train.items():
    config.train[key] = value
  config.sample.respacing = "3"
  config.edit.prompts = "3,seven"
  config.edit.guidance_scales = (0.0, 2.0)
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("edit")
  base = str(root / "base")
  train(tiny_config(), base)
  inpaint_config = tiny_config(init_from=base)
  inpaint_config.model.inpaint = True
  inpaint_config.train.edit_composites = 0.5  # Its batches carry composites and their masks (editing.composites).
  inpaint = str(root / "inpaint")
  state = train(inpaint_config, inpaint)
  return root, base, inpaint, inpaint_config, state


def check_edits(paths, originals, known_expected):
  with np.load(paths["npz"]) as f:
    edits, originals_saved, known = f["edits"], f["originals"], f["known"]
    assert list(f["prompts"]) == ["3", "seven"] and list(f["guidance"]) == [0.0, 2.0]
    method = str(f["method"])
  n = len(originals)
  assert edits.shape == (n, 2, 2, 16, 16, 1) and edits.dtype == np.uint8
  np.testing.assert_array_equal(originals_saved, originals)
  np.testing.assert_array_equal(known[0], known_expected)
  keep = np.broadcast_to(known.reshape(n, 1, 1, 16, 16, 1) == 1, edits.shape)
  np.testing.assert_array_equal(edits[keep], np.broadcast_to(originals.reshape(n, 1, 1, 16, 16, 1), edits.shape)[keep])
  assert np.any(edits[~keep] != np.broadcast_to(originals.reshape(n, 1, 1, 16, 16, 1), edits.shape)[~keep])
  figure = Image.open(paths["figure"])
  assert figure.mode == "RGB" and figure.size[0] > 6 * 16 * 3  # original, masked and 4 edits per row.
  return method


def test_a_base_run_edits_test_digits_by_the_replacement_method(runs, capsys):
  _, base, _, _, _ = runs
  config = tiny_config()
  config.edit.images = "test:0,5,7"
  paths = edit_and_save(config, base)
  test = data_lib.load_dataset(config.data, config.data.test_split)
  known = np.ones((16, 16, 1), np.uint8)
  known[8:] = 0
  assert check_edits(paths, test.images[[0, 5, 7]], known) == "replacement method"
  assert "differ from the originals by at most 0 at uint8" in capsys.readouterr().out


def test_the_inpainting_run_starts_from_the_base_and_edits_png_files(runs, tmp_path, capsys):
  root, base, inpaint, config, state = runs
  assert int(state.step) == 2
  # A 28x28 PNG as MNIST's own, and a mask PNG of the same size whose white part is generated.
  test = data_lib.load_split("mnist", "test[:2]", "", 28)
  digit = tmp_path / "digit.png"
  Image.fromarray(test.images[1][..., 0]).save(digit)
  mask = np.zeros((28, 28), np.uint8)
  mask[:, 14:] = 255
  Image.fromarray(mask).save(tmp_path / "mask.png")
  config.edit.images = str(digit)
  config.edit.mask = str(tmp_path / "mask.png")
  paths = edit_and_save(config, inpaint)
  known = np.ones((16, 16, 1), np.uint8)
  known[:, 8:] = 0
  originals = resize_bicubic(test.images[1:2], 16)  # As glide-text2im's inpaint notebook reads a file.
  assert check_edits(paths, originals, known) == "inpainting model"


def test_init_from_a_run_of_another_model_names_the_difference(runs, tmp_path):
  _, base, _, _, _ = runs
  config = tiny_config(init_from=base)
  config.model.inpaint = True
  config.model.model_channels = 64
  with pytest.raises(UserError, match=r"the run in .*base has another model than this one \(apart from "
                                      r"model\.inpaint\): model\.model_channels: 32 in the checkpoint, 64 now"):
    train(config, str(tmp_path / "other"))
  with pytest.raises(UserError, match=r"holds no training run"):
    train(tiny_config(init_from=str(tmp_path)), str(tmp_path / "third"))


def test_edit_evaluation_names_the_field_of_a_bad_base_run(runs, tmp_path):
  _, base, inpaint, config, _ = runs
  config = config.copy_and_resolve_references()
  had_eval = os.path.exists(os.path.join(inpaint, "eval"))
  config.edit.base_workdir = str(tmp_path / "missing")
  with pytest.raises(UserError, match=r"config\.edit\.base_workdir = '.*missing' holds no base run \(no "
                                      r"checkpoints/ in it\)"):
    evaluate(config, inpaint)
  config.edit.base_workdir = inpaint  # The inpainting run itself: another model than its base.
  with pytest.raises(UserError, match=r"config\.edit\.base_workdir = '.*inpaint' holds another model than this "
                                      r"inpainting run's base \(apart from model\.inpaint\): model\.inpaint: True "
                                      r"in the checkpoint, False now"):
    evaluate(config, inpaint)
  assert os.path.exists(os.path.join(inpaint, "eval")) == had_eval  # Refused before anything was written.


def test_edit_evaluation_compares_the_inpainting_model_with_the_replacement_method(runs, tiny_classifier_dir):
  _, _, inpaint, config, _ = runs
  config.edit.mask = "bottom"
  config.edit.eval_images = 20
  with_classifier(config, tiny_classifier_dir)
  report = evaluate(config, inpaint)  # --mode=eval on an inpainting run evaluates its edits.
  with open(os.path.join(inpaint, "eval", "edit_eval.json")) as f:
    assert json.load(f) == report
  assert os.path.isfile(os.path.join(inpaint, "eval", "edit_eval.png"))
  assert [(r["method"], r["guidance_scale"]) for r in report["results"]] == [
      ("inpainting model", 0.0), ("inpainting model", 2.0), ("replacement method", 0.0), ("replacement method", 2.0)]
  assert set(report["steps"]) == {"inpainting model", "replacement method"}
  assert report["config"]["num_images"] == 20 and report["originals"]["accuracy"] > 0.5
  for r in report["results"]:
    assert r["known_region_error"] == 0
    assert 0.0 <= r["edit_accuracy"] <= 1.0 and 0.0 <= r["kept_class"] <= 1.0
    assert r["fid"] > 0 and r["seconds"] > 0
  # The edited images are saved row by row after the baseline's composites, and the per-target accuracies
  # average to the edit accuracy.
  saved = load_samples(os.path.join(inpaint, "eval", "edit_samples.npz"))
  assert saved["images"].shape == (5 * 20, 16, 16, 1) and saved["images"].dtype == np.uint8
  assert saved["method"].tolist() == (["nearest neighbour"] * 20 + ["inpainting model"] * 40
                                      + ["replacement method"] * 20 * 2)
  assert np.all(np.isnan(saved["guidance_scale"][:20]))
  np.testing.assert_array_equal(saved["guidance_scale"][20:], np.tile(np.repeat(np.float32([0.0, 2.0]), 20), 2))
  test = data_lib.load_dataset(config.data, config.data.test_split)
  np.testing.assert_array_equal(saved["original"], np.tile(test.labels[:20], 5))
  np.testing.assert_array_equal(saved["image"], np.tile(np.arange(20), 5))
  np.testing.assert_array_equal(saved["prompted"], (saved["original"] + 1) % 10)
  bottom = np.arange(16) >= 8
  np.testing.assert_array_equal(saved["images"][:, ~bottom], np.tile(test.images[:20], (5, 1, 1, 1))[:, ~bottom])
  counts = np.bincount((test.labels[:20] + 1) % 10, minlength=10)
  for r in [*report["results"], report["baseline"]]:
    per_target = np.array(r["per_target_accuracy"], np.float64)
    assert r["per_target_count"] == counts.tolist()
    assert np.all(np.isnan(per_target) == (counts == 0))
    assert np.nansum(per_target * counts) / 20 == pytest.approx(r["edit_accuracy"])
  check_baseline(report, saved["images"][:20], saved["prompted"][:20], config)


def check_baseline(report, composites, prompted, config):
  """The nearest-neighbour baseline keeps the known region exactly and completes it from a training image of
  the prompted class."""
  assert report["baseline"]["method"] == "nearest neighbour" and report["baseline"]["known_region_error"] == 0
  train_set = data_lib.load_dataset(config.data, config.data.train_split)
  bottom = np.arange(16) >= 8
  for image, digit in zip(composites, prompted):
    matches = np.flatnonzero(np.all(train_set.images[:, bottom] == image[bottom], axis=(1, 2, 3)))
    assert len(matches) and digit in train_set.labels[matches]


def test_edit_evaluation_to_every_other_class(runs, tiny_classifier_dir):
  """config.edit.targets = "all": each image is edited to the nine other classes, the baseline too."""
  _, base, _, _, _ = runs
  config = with_classifier(tiny_config(), tiny_classifier_dir)
  config.edit.eval_images, config.edit.targets, config.edit.guidance_scales = 3, "all", (2.0,)
  config.eval.output_dir = "eval_all"
  from glide_jax.modes.eval_edit import run as evaluate_edits
  report = evaluate_edits(config, base)
  test = data_lib.load_dataset(config.data, config.data.test_split)
  assert report["config"]["num_images"] == 3 and report["config"]["num_edits"] == 27
  assert [(r["method"], r["guidance_scale"]) for r in report["results"]] == [("replacement method", 2.0)]
  saved = load_samples(os.path.join(base, "eval_all", "edit_samples.npz"))
  np.testing.assert_array_equal(saved["image"], np.tile(np.repeat(np.arange(3), 9), 2))
  for i in range(3):
    assert sorted(saved["prompted"][9 * i:9 * i + 9]) == [c for c in range(10) if c != test.labels[i]]
  for r in [*report["results"], report["baseline"]]:
    per_target, counts = np.array(r["per_target_accuracy"], np.float64), np.array(r["per_target_count"])
    assert counts.sum() == 27 and np.nansum(per_target * counts) / 27 == pytest.approx(r["edit_accuracy"])
  check_baseline(report, saved["images"][:27], saved["prompted"][:27], config)
