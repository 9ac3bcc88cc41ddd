"""--mode=eval: how good the samples are, per guidance scale, measured with the MNIST classifier.

For each scale in config.sample.guidance_scales, config.eval.samples_per_digit samples are drawn for
each class prompt ("zero" … "nine") with the config's sampler and respacing, from the latest
checkpoint's EMA parameters. The same noise is used at every scale (paired comparison). Scores:

- **accuracy**: how often the classifier's argmax is the prompt's class, overall and per class;
- **fid**: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the test split ("classifier FID"; it plays Inception's part for MNIST);
- **diversity**: for each class, the mean pairwise feature distance among its samples over the same for
  the test split's images of that class, averaged over classes (1.0 = as diverse as real data, lower =
  mode collapse, which strong guidance causes).

For reference: **floor**, the FID of real training images (as many as the test split, at most 10,000)
against the test split, the best a model can do at that sample size; and **real**, a class-balanced
training subset of exactly the samples' size scored like the samples (FID is biased upwards at small
sample sizes, so compare a scale's FID with this one). Written to workdir/eval/eval.json and eval.png.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from glide_jax import classifier as classifier_lib
from glide_jax import data as data_lib
from glide_jax.errors import UserError

FLOOR_MAX_IMAGES = 10_000


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"Feature statistics need an [N >= 2, D] array, got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
  w, v = np.linalg.eigh((matrix + matrix.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½ between N(μ₁, Σ₁) and N(μ₂, Σ₂).

  tr (Σ₁ Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½ = Σᵢ √λᵢ with λᵢ the eigenvalues of the symmetric PSD matrix
  Σ₁^½ Σ₂ Σ₁^½, so only symmetric eigendecompositions are needed: no complex parts, and singular
  covariances (fewer samples than features) are fine. Round-off negatives are clamped to 0.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"Mismatched shapes: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}.")
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
  diff = mu1 - mu2
  d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
  return max(d2, 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def mean_pairwise_distance(features: np.ndarray) -> float:
  """Mean Euclidean distance over the N(N−1)/2 pairs of rows of features [N, D]; nan when N < 2."""
  f = np.asarray(features, np.float64)
  n = len(f)
  if n < 2:
    return math.nan
  sq = np.sum(f * f, axis=1)
  d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0, None)
  i, j = np.triu_indices(n, k=1)
  return float(np.mean(np.sqrt(d2[i, j])))


def per_class_spread(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes] mean pairwise feature distance within each class (nan for a class with < 2 images)."""
  return np.array([mean_pairwise_distance(features[labels == k]) for k in range(num_classes)])


class Scorer:
  """Scores a labelled set of images against the test split's features (computed once)."""

  def __init__(self, classifier: classifier_lib.TrainedClassifier, test: data_lib.ImageDataset,
               batch_size: int = 500):
    self.classifier, self.batch_size = classifier, batch_size
    self.num_classes = len(test.class_names)
    test_features = classifier.features(test.images, batch_size)
    self.test_stats = feature_statistics(test_features)
    self.test_spread = per_class_spread(test_features, test.labels, self.num_classes)

  def features_and_predictions(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats, logits = classifier_lib._outputs(self.classifier.params, images, self.batch_size)
    return feats, np.argmax(logits, axis=-1)

  def fid(self, images: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(self.features_and_predictions(images)[0]), *self.test_stats)

  def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """accuracy (and per class), fid against the test split, diversity (and per class) of uint8 images."""
    labels = np.asarray(labels)
    feats, predictions = self.features_and_predictions(images)
    correct = predictions == labels
    per_class_accuracy = [float(np.mean(correct[labels == k])) if np.any(labels == k) else math.nan
                          for k in range(self.num_classes)]
    ratios = per_class_spread(feats, labels, self.num_classes) / self.test_spread
    return {
        "accuracy": float(np.mean(correct)),
        "per_digit_accuracy": per_class_accuracy,
        "fid": frechet_distance(*feature_statistics(feats), *self.test_stats),
        "diversity": float(np.nanmean(ratios)) if np.any(np.isfinite(ratios)) else math.nan,
        "per_digit_diversity": [float(r) for r in ratios],
        "num_samples": int(len(labels)),
    }


def balanced_subset(labels: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of up to per_class random examples of each class, class-major."""
  return np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(num_classes)])


def _json_safe(value):
  """nan/inf → None (strict JSON), numpy scalars → Python numbers."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def format_table(report: dict) -> str:
  """The per-scale results and the real-data references as a fixed-width table."""
  lines = [f"{'guidance':>8}  {'accuracy':>8}  {'FID':>9}  {'diversity':>9}  {'seconds':>8}"]
  fmt = lambda x, spec: "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
  for r in report["results"]:
    lines.append(f"{r['guidance_scale']:>8g}  {fmt(r['accuracy'], '8.3f')}  {fmt(r['fid'], '9.3f')}  "
                 f"{fmt(r['diversity'], '9.3f')}  {r['seconds']:>8.1f}")
  real = report["real"]
  lines.append(f"{'real':>8}  {fmt(real['accuracy'], '8.3f')}  {fmt(real['fid'], '9.3f')}  "
               f"{fmt(real['diversity'], '9.3f')}  {'':>8}   ({real['num_samples']} training images, same size)")
  floor = report["floor"]
  lines.append(f"{'floor':>8}  {'':>8}  {fmt(floor['fid'], '9.3f')}  {'':>9}  {'':>8}   "
               f"({floor['num_train']} training vs {floor['num_test']} test images)")
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """Accuracy, FID and diversity against the guidance scale, with the real-data references dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  scales = [r["guidance_scale"] for r in report["results"]]
  nan = lambda x: math.nan if x is None else x
  panels = (("accuracy", "prompt accuracy", report["real"]["accuracy"], "real images"),
            ("fid", "classifier FID (lower is better)", report["real"]["fid"], "real images, same size"),
            ("diversity", "diversity (1 = real data)", 1.0, "test split"))
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, (key, title, ref, ref_label) in zip(axes, panels):
    ax.plot(scales, [nan(r[key]) for r in report["results"]], "o-", label="samples")
    ax.axhline(nan(ref), color="gray", linestyle="--", label=ref_label)
    if key == "fid":
      ax.axhline(nan(report["floor"]["fid"]), color="gray", linestyle=":",
                 label=f"floor ({report['floor']['num_train']} vs {report['floor']['num_test']})")
    if key == "accuracy":
      ax.axhline(1.0 / len(report["class_names"]), color="gray", linestyle=":", label="chance")
      ax.set_ylim(0, 1.02)
    else:
      ax.set_ylim(bottom=0)
    ax.set_xlabel("guidance scale")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  c = report["config"]
  fig.suptitle(f"step {report['step']}: {c['samples_per_digit']} samples per class, {c['sampler']} "
               f"{c['sampling_steps']} steps (respacing {c['respacing'] or 'none'!r})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples and scores every guidance scale from workdir's latest checkpoint; returns the report
  written to workdir/eval/eval.json (and plotted in eval.png)."""
  from glide_jax.sample_main import check_guidance_scales, load_params, sample_grid
  from glide_jax.sampling import GuidedSampler
  from glide_jax.train import Experiment

  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} does not exist: point it at a training run's directory.")
  exp = Experiment.from_config(config)
  s, e = config.sample, config.eval
  scales = check_guidance_scales(s.guidance_scales)
  if s.batch_size < 1:
    raise UserError("config.sample.batch_size must be at least 1.")
  params, step = load_params(exp, workdir, s.use_ema)
  sampler = GuidedSampler(exp.model, exp.diffusion, s.sampler, s.respacing, s.ddim_eta, exp.tokenizer.pad_id,
                          exp.mesh)
  is_main = jax.process_index() == 0

  classifier = classifier_lib.get_or_train_classifier(config, verbose=is_main)
  test = data_lib.load_dataset(config.data, config.data.test_split)
  train = data_lib.load_dataset(config.data)
  class_names = list(test.class_names)
  num_classes = len(class_names)
  scorer = Scorer(classifier, test, e.batch_size)
  rng = np.random.default_rng(config.seed)
  floor_idx = rng.permutation(len(train))[:min(len(test), len(train), FLOOR_MAX_IMAGES)]
  floor = {"fid": scorer.fid(train.images[floor_idx]), "num_train": int(len(floor_idx)), "num_test": len(test)}
  real_idx = balanced_subset(train.labels, e.samples_per_digit, num_classes, rng)
  real = scorer(train.images[real_idx], train.labels[real_idx])

  k = e.samples_per_digit
  labels = np.repeat(np.arange(num_classes), k)
  results = []
  if is_main:
    print(f"Evaluating step {step}: {k} samples for each of {num_classes} prompts at {len(scales)} guidance "
          f"scale(s), {s.sampler} with {sampler.num_steps} steps.", flush=True)
  for scale in scales:
    start = time.perf_counter()
    # The same key at every scale: sample i starts from the same noise whatever the scale.
    grid = sample_grid(exp, params, class_names, [scale], k, jax.random.key(config.seed), sampler)
    images = grid[:, 0].reshape(num_classes * k, *grid.shape[3:])
    result = {"guidance_scale": scale, **scorer(images, labels)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    results.append(result)
    if is_main:
      print(f"  guidance {scale:g}: accuracy {result['accuracy']:.3f}, FID {result['fid']:.3f}, "
            f"diversity {result['diversity']:.3f} ({result['seconds']:.0f}s)", flush=True)

  report = _json_safe({
      "step": step,
      "config": {"sampler": s.sampler, "respacing": s.respacing, "sampling_steps": sampler.num_steps,
                 "ddim_eta": float(s.ddim_eta), "use_ema": bool(s.use_ema), "samples_per_digit": k,
                 "guidance_scales": scales, "seed": config.seed, "dataset": config.data.name,
                 "image_size": config.data.image_size, "test_split": config.data.test_split,
                 "train_split": config.data.train_split},
      "class_names": class_names,
      "classifier": {"directory": classifier.directory, **classifier.info},
      "floor": floor,
      "real": real,
      "results": results,
  })
  if is_main:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
    plot(report, os.path.join(out_dir, "eval.png"))
    print(format_table(report), flush=True)
    print(f"Wrote {os.path.join(out_dir, 'eval.json')} and {os.path.join(out_dir, 'eval.png')}.", flush=True)
  return report
