"""--mode=train_classifier: the classifier --mode=eval scores with, trained and cached ahead of time."""

from __future__ import annotations

from typing import Optional

import jax
import ml_collections

from glide_jax.config import validate_config
from glide_jax.evaluation.classifier_cache import TrainedClassifier, get_or_train_classifier, shipped_classifier


def run(config: ml_collections.ConfigDict, workdir: Optional[str] = None) -> TrainedClassifier:
  """The checked config's classifier, trained and cached unless the cache holds one trained with the same
  settings (config.eval.classifier_*): other settings train one in its place.

  The workdir is not used: the cache is shared by every run on the same dataset and image size. Where the
  package ships an evaluator, --mode=eval keeps scoring with it unless told otherwise (said at the end).
  """
  del workdir
  validate_config(config)
  verbose = jax.process_index() == 0
  trained = get_or_train_classifier(config, verbose=verbose, retrain_if_other_recipe=True)
  if verbose and shipped_classifier(config) is not None:
    print("Note: --mode=eval scores with the evaluator shipped for this dataset and size; add "
          "--config.eval.shipped_classifier=False (or --config.eval.classifier_dir) to score with this one.",
          flush=True)
  return trained
