"""Scores of a set of generated images through a classifier's eyes: classifier FID, accuracy, diversity.

- **accuracy**: how often the classifier's argmax is the prompt's class, overall and per class;
- **fid**: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the test split ("classifier FID"; it plays Inception's part for MNIST);
- **diversity**: for each class, the mean pairwise feature distance among its samples over the same for
  the test split's images of that class, averaged over classes (1.0 = as diverse as real data, lower =
  mode collapse, which strong guidance causes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from glide_jax import data as data_lib
from glide_jax.evaluation import classifier as classifier_lib
from glide_jax.evaluation.classifier_cache import TrainedClassifier


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


def per_class_mean(values: np.ndarray, classes: np.ndarray, num_classes: int) -> list[float]:
  """[num_classes] mean of values over the rows of each class (nan for a class with no rows)."""
  return [float(np.mean(values[classes == k])) if np.any(classes == k) else math.nan for k in range(num_classes)]


def per_class_spread(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes] mean pairwise feature distance within each class (nan for a class with < 2 images)."""
  return np.array([mean_pairwise_distance(features[labels == k]) for k in range(num_classes)])


class Scorer:
  """Scores a labelled set of images against the test split's features (computed once)."""

  def __init__(self, classifier: TrainedClassifier, test: data_lib.ImageDataset,
               batch_size: int = 500):
    self.classifier, self.batch_size = classifier, batch_size
    self.num_classes = len(test.class_names)
    test_features = classifier.features(test.images, batch_size)
    self.test_stats = feature_statistics(test_features)
    self.test_spread = per_class_spread(test_features, test.labels, self.num_classes)

  def features_and_predictions(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats, logits = classifier_lib.outputs(self.classifier.params, images, self.batch_size)
    return feats, np.argmax(logits, axis=-1)

  def fid(self, images: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(self.features_and_predictions(images)[0]), *self.test_stats)

  def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """accuracy (and per class), fid against the test split, diversity (and per class) of uint8 images."""
    labels = np.asarray(labels)
    feats, predictions = self.features_and_predictions(images)
    correct = predictions == labels
    ratios = per_class_spread(feats, labels, self.num_classes) / self.test_spread
    return {
        "accuracy": float(np.mean(correct)),
        "per_digit_accuracy": per_class_mean(correct, labels, self.num_classes),
        "fid": frechet_distance(*feature_statistics(feats), *self.test_stats),
        "diversity": float(np.nanmean(ratios)) if np.any(np.isfinite(ratios)) else math.nan,
        "per_digit_diversity": [float(r) for r in ratios],
        "num_samples": int(len(labels)),
    }


def balanced_subset(labels: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of up to per_class random examples of each class, class-major."""
  return np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(num_classes)])
