"""--mode=eval: the Fréchet distance against closed forms, its response to damaged images, and an
evaluation of a tiny checkpoint end to end (eval.json, eval.png)."""

import json
import math
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from PIL import Image

from configs import tiny
from glide_jax import data as data_lib
from glide_jax.errors import ConfigError
from glide_jax.evaluation import classifier as clf
from glide_jax.evaluation import classifier_cache as cache
from glide_jax.evaluation import metrics
from glide_jax.evaluation import report as report_lib
from glide_jax.evaluation.samples_file import load_samples
from glide_jax.modes import eval as eval_mode
from glide_jax.modes.train import run as train
from helpers.runs import with_classifier

SCALES = (0.0, 3.0)
K = 2


def random_covariance(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# --- Fréchet distance ------------------------------------------------------------------------------------

def test_distance_of_a_set_with_itself_is_zero():
  feats = np.random.default_rng(0).normal(size=(400, 32)) @ np.random.default_rng(1).normal(size=(32, 32))
  mu, sigma = metrics.feature_statistics(feats)
  assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-7)
  assert metrics.fid_from_features(feats, feats.copy()) == pytest.approx(0.0, abs=1e-7)


def test_identity_covariances_give_the_squared_mean_distance():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
  eye = np.eye(10)
  assert metrics.frechet_distance(mu1, eye, mu2, eye) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-10)


def test_closed_forms_for_diagonal_and_one_dimensional_gaussians():
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
  # Commuting covariances: tr (Σ₁Σ₂)^½ = Σ √(aᵢbᵢ), so d² = ‖Δμ‖² + Σ (√aᵢ − √bᵢ)².
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
  # 1-D: (m₁ − m₂)² + (s₁ − s₂)² with s the standard deviations.
  assert metrics.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_full_covariances_match_scipy_sqrtm_and_are_symmetric():
  rng = np.random.default_rng(4)
  mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
  s1, s2 = random_covariance(rng, 20), random_covariance(rng, 20)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
  assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_singular_covariances_stay_finite_and_non_negative():
  rng = np.random.default_rng(5)
  s1, s2 = random_covariance(rng, 30, rank=4), random_covariance(rng, 30, rank=4)  # Fewer samples than features.
  d = metrics.frechet_distance(np.zeros(30), s1, np.zeros(30), s2)
  assert math.isfinite(d) and d > 0
  assert metrics.frechet_distance(np.zeros(30), s1, np.zeros(30), s1) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_mean_pairwise_distance_and_balanced_subset():
  points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # Distances 3, 4 and 5.
  assert metrics.mean_pairwise_distance(points) == pytest.approx(4.0)
  assert math.isnan(metrics.mean_pairwise_distance(points[:1]))
  labels = np.array([0, 1, 1, 2, 2, 2, 0, 1])
  idx = metrics.balanced_subset(labels, 2, 3, np.random.default_rng(0))
  assert labels[idx].tolist() == [0, 0, 1, 1, 2, 2] and len(set(idx.tolist())) == 6


# --- A tiny checkpoint evaluated end to end (its classifier is trained by evaluate and cached) -----------

def eval_config(tmp_path):
  config = tiny.get_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  config.sample.respacing = "5"
  config.sample.guidance_scales = SCALES
  config.eval.samples_per_digit = K
  return with_classifier(config, tmp_path / "classifier")  # Trained by evaluate here, not the shared one.


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("eval_run")
  workdir = str(tmp_path / "run")
  config = eval_config(tmp_path)
  train(config, workdir)
  report = eval_mode.run(config, workdir)
  return config, workdir, report


def test_eval_json(evaluated):
  config, workdir, report = evaluated
  with open(os.path.join(workdir, "eval", "eval.json")) as f:
    saved = json.load(f)
  assert saved == report
  assert saved["step"] == 2
  assert saved["config"]["sampler"] == "ddpm" and saved["config"]["respacing"] == "5"
  assert saved["config"]["sampling_steps"] == 5 and saved["config"]["samples_per_digit"] == K
  assert saved["config"]["guidance"] == "classifier_free" and saved["config"]["forward_passes_per_sample"] == 10
  assert saved["class_names"] == list(data_lib.DIGIT_WORDS)
  assert saved["classifier"]["image_size"] == 16 and saved["classifier"]["test_accuracy"] > 0.6
  assert [r["guidance_scale"] for r in saved["results"]] == list(SCALES)
  for r in saved["results"]:
    assert r["num_samples"] == 10 * K
    assert len(r["per_digit_accuracy"]) == 10 and len(r["per_digit_diversity"]) == 10
    assert all(a in (0.0, 0.5, 1.0) for a in r["per_digit_accuracy"])  # K = 2 samples per digit.
    assert r["accuracy"] == pytest.approx(np.mean(r["per_digit_accuracy"]))
    assert math.isfinite(r["fid"]) and r["fid"] > 0
    assert r["diversity"] > 0 and r["seconds"] > 0
  # References: real training images score as real data does.
  floor, real = saved["floor"], saved["real"]
  assert floor["num_train"] == floor["num_test"] == 256  # tiny: test[:256]; train[:512] is larger.
  assert real["num_samples"] == 10 * K and real["accuracy"] >= 0.6
  # Two training steps give noise, not digits: much farther from the test set than real images are.
  for r in saved["results"]:
    assert r["fid"] > 2 * real["fid"] and r["fid"] > 5 * floor["fid"]


def test_eval_samples_npz_rescores_to_the_reported_numbers(evaluated):
  config, workdir, report = evaluated
  saved = load_samples(os.path.join(workdir, "eval", "samples.npz"))
  setting = json.loads(str(saved["setting"]))  # How they were sampled, as the report says.
  assert setting == {k: report["config"][k] for k in setting} and setting["guidance"] == "classifier_free"
  n = 10 * K
  assert saved["images"].shape == (len(SCALES) * n, 16, 16, 1) and saved["images"].dtype == np.uint8
  np.testing.assert_array_equal(saved["prompted"], np.tile(np.repeat(np.arange(10), K), len(SCALES)))
  np.testing.assert_array_equal(saved["guidance_scale"], np.repeat(np.float32(SCALES), n))
  assert saved["class_names"].tolist() == list(data_lib.DIGIT_WORDS)
  # Anyone's classifier can rescore the file; ours gives back the report's accuracy, per scale and digit.
  _, logits = clf.outputs(cache.load_classifier(config).params, saved["images"])
  correct = np.argmax(logits, axis=-1) == saved["prompted"]
  for i, r in enumerate(report["results"]):
    rows = slice(i * n, (i + 1) * n)
    assert r["accuracy"] == pytest.approx(np.mean(correct[rows]))
    assert r["per_digit_accuracy"] == pytest.approx(
        metrics.per_class_mean(correct[rows], saved["prompted"][rows], 10))


def test_eval_png_and_cached_classifier(evaluated):
  config, workdir, _ = evaluated
  image = Image.open(os.path.join(workdir, "eval", "eval.png"))
  assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 200
  assert np.asarray(image.convert("L")).std() > 10  # Something is drawn.
  assert sorted(os.listdir(config.eval.classifier_dir)) == [cache.INFO_FILE, cache.PARAMS_FILE]


def test_drawing_the_report_leaves_matplotlibs_backend_as_it_was(evaluated, tmp_path):
  import matplotlib
  _, _, report = evaluated
  before = matplotlib.get_backend()
  matplotlib.use("svg")  # A backend of the user's (a notebook's inline one, say).
  try:
    report_lib.plot(report, str(tmp_path / "again.png"))
    assert matplotlib.get_backend() == "svg"
  finally:
    matplotlib.use(before)
  assert Image.open(tmp_path / "again.png").format == "PNG"


def test_an_output_dir_keeps_the_first_evaluation_and_draws_the_same_samples(evaluated):
  config, workdir, report = evaluated
  with open(os.path.join(workdir, "eval", "eval.json")) as f:
    first_json = f.read()
  other = config.copy_and_resolve_references()
  other.sample.guidance_scales = (SCALES[-1],)
  other.eval.output_dir = "eval_last_scale"  # Relative: under the workdir.
  second = eval_mode.run(other, workdir)
  with open(os.path.join(workdir, "eval", "eval.json")) as f:
    assert f.read() == first_json
  assert sorted(os.listdir(os.path.join(workdir, "eval_last_scale"))) == ["eval.json", "eval.png", "samples.npz"]
  # The same noise at every scale: the last scale alone draws exactly the images it drew among all scales.
  alone = load_samples(os.path.join(workdir, "eval_last_scale", "samples.npz"))
  among = load_samples(os.path.join(workdir, "eval", "samples.npz"))
  np.testing.assert_array_equal(alone["images"], among["images"][-10 * K:])
  same = {k: v for k, v in report["results"][-1].items() if k != "seconds"}
  assert {k: v for k, v in second["results"][0].items() if k != "seconds"} == same


@pytest.mark.parametrize("relative", [True, False])
def test_an_output_dir_that_is_a_file_is_refused_and_nothing_is_written(evaluated, relative):
  config, workdir, _ = evaluated
  path = os.path.join(workdir, "a_file")
  with open(path, "w") as f:
    f.write("x")
  before = sorted(os.listdir(workdir))
  other = config.copy_and_resolve_references()
  other.eval.output_dir = "a_file" if relative else path
  with pytest.raises(ConfigError, match=r"config\.eval\.output_dir = .* is a file"):
    eval_mode.run(other, workdir)
  assert sorted(os.listdir(workdir)) == before


def test_table_lists_every_scale_and_the_references(evaluated):
  _, _, report = evaluated
  lines = report_lib.format_table(report).splitlines()
  assert lines[0].split() == ["guidance", "accuracy", "worst", "digit", "FID", "diversity", "seconds"]
  assert [line.split()[0] for line in lines[1:]] == ["0", "3", "real", "floor"]
  for line, r in zip(lines[1:3], report["results"]):
    lowest = min(r["per_digit_accuracy"])
    assert line.split()[2:4] == [f"{lowest:.3f}", report["class_names"][r["per_digit_accuracy"].index(lowest)]]


def test_worst_class_skips_classes_without_samples():
  assert report_lib.worst_class([0.5, None, 0.25, float("nan")], ["a", "b", "c", "d"]) == "0.250 c"
  assert report_lib.worst_class([None], ["a"]) == "-"


# --- The distance responds to what is wrong with the images ---------------------------------------------

def test_scoring_the_test_set_itself_is_perfect_diversity_and_zero_distance(evaluated):
  config, _, _ = evaluated
  trained = cache.load_classifier(config)  # The one evaluate cached.
  test = data_lib.load_dataset(config.data, config.data.test_split)
  scores = metrics.Scorer(trained, test)(test.images, test.labels)
  assert scores["fid"] == pytest.approx(0.0, abs=1e-6)
  assert scores["diversity"] == pytest.approx(1.0, abs=1e-9)
  assert scores["accuracy"] == pytest.approx(clf.accuracy(trained.params, test.images, test.labels))


def test_distance_grows_when_images_are_blurred_or_replaced_by_noise(evaluated):
  config, _, _ = evaluated
  trained = cache.load_classifier(config)
  real = data_lib.load_dataset(config.data, "test[:1000]").images  # Real MNIST test digits at 16x16.
  reference, held_out = real[:500], real[500:]
  ref_feats = trained.features(reference)
  fid = lambda images: metrics.fid_from_features(trained.features(images), ref_feats)
  blur = lambda sigma: np.clip(np.rint(scipy.ndimage.gaussian_filter(
      held_out.astype(np.float32), sigma=(0, sigma, sigma, 0))), 0, 255).astype(np.uint8)
  noise = np.random.default_rng(0).integers(0, 256, size=held_out.shape, dtype=np.uint8)
  real_fid, slight, strong, noise_fid = fid(held_out), fid(blur(0.7)), fid(blur(1.5)), fid(noise)
  # More blur, farther; noise is far too (how it ranks against heavy blur depends on the classifier).
  assert real_fid < slight < strong, (real_fid, slight, strong)
  assert slight > 3 * real_fid and noise_fid > 10 * real_fid, (real_fid, slight, noise_fid)


def test_eval_with_adaptive_projected_guidance_records_its_settings_and_cost(evaluated):
  """Another guidance rule through --mode=eval: its settings and forward passes are in the report, and with
  the guidance interval the steps outside it cost one pass (5 steps, 2 of them guided: 7 passes)."""
  config, workdir, report = evaluated
  other = config.copy_and_resolve_references()
  other.sample.guidance_scales = (SCALES[-1],)
  other.sample.guidance, other.sample.apg_eta, other.sample.apg_norm_threshold = "adaptive_projected", 0.25, 3.0
  other.sample.guidance_interval = (0.3, 0.8)
  other.eval.output_dir = "eval_apg"
  apg = eval_mode.run(other, workdir)
  assert {k: apg["config"][k] for k in ("guidance", "apg_eta", "apg_norm_threshold", "guidance_interval",
                                         "forward_passes_per_sample")} == {
      "guidance": "adaptive_projected", "apg_eta": 0.25, "apg_norm_threshold": 3.0, "guidance_interval": [0.3, 0.8],
      "forward_passes_per_sample": 7}
  # The same noise as the classifier-free evaluation, other samples.
  among = load_samples(os.path.join(workdir, "eval", "samples.npz"))["images"][-10 * K:]
  assert not np.array_equal(load_samples(os.path.join(workdir, "eval_apg", "samples.npz"))["images"], among)
