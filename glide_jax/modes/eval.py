"""--mode=eval: how good the samples are, per guidance scale, measured with the dataset's classifier.

For each scale in config.sample.guidance_scales, config.eval.samples_per_digit samples are drawn for
each class prompt ("zero" … "nine") with the config's sampler and respacing, from the latest
checkpoint's EMA parameters. The same noise is used at every scale (paired comparison). The scores
(accuracy, classifier FID, diversity) are those of `glide_jax.evaluation.metrics`.

For reference: **floor**, the FID of real training images (as many as the test split, at most 10,000)
against the test split, the best a model can do at that sample size; and **real**, a class-balanced
training subset of exactly the samples' size scored like the samples (FID is biased upwards at small
sample sizes, so compare a scale's FID with this one). Written to workdir/eval/eval.json and eval.png; the
scored images to workdir/eval/samples.npz (`samples_file`), for rescoring with another classifier.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax.config import guidance_scales
from glide_jax.evaluation.classifier_cache import get_or_train_classifier
from glide_jax.evaluation.metrics import Scorer, balanced_subset
from glide_jax.evaluation.report import format_table, json_safe, output_dir, plot, sampling_settings, save_report
from glide_jax.evaluation.samples_file import save_samples
from glide_jax.experiment import Experiment
from glide_jax.modes import eval_edit, eval_scenes
from glide_jax.rng import stream_key
from glide_jax.sampling import batched

FLOOR_MAX_IMAGES = 10_000


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples and scores every guidance scale from workdir's latest checkpoint; returns the report
  written to workdir/eval/eval.json (or config.eval.output_dir) and plotted in eval.png. An inpainting run's
  edits are evaluated instead (evaluate_edit), and MNIST scenes by where their digits are (eval_scenes)."""
  if config.data.source == "mnist_scenes":
    return eval_scenes.run(config, workdir)
  data_lib.require_classes(config.data, "--mode=eval")
  if config.model.inpaint:
    return eval_edit.run(config, workdir)
  exp = Experiment(config, workdir)
  exp.require_not_upsampler("--mode=eval")
  workdir = exp.open_workdir(create=False)
  out = output_dir(config.eval, workdir)  # A bad one is refused before the sampling.
  s, e = config.sample, config.eval
  scales = guidance_scales(s)
  params, step = exp.load_params(s.use_ema)
  sampler = exp.sampler(params)
  is_main = jax.process_index() == 0

  classifier = get_or_train_classifier(config, verbose=is_main)
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
  results, all_images = [], []
  if is_main:
    print(f"Evaluating step {step}: {k} samples for each of {num_classes} prompts at {len(scales)} guidance "
          f"scale(s), {s.sampler} with {sampler.num_steps} steps ({s.guidance}, {sampler.forward_passes_per_sample} "
          f"forward passes per sample).", flush=True)
  progress = batched.progress_bar(len(scales) * num_classes * k, "eval")
  for scale in scales:
    start = time.perf_counter()
    # The same key at every scale: sample i starts from the same noise whatever the scale.
    grid = exp.sample_grid(sampler, class_names, [scale], k, stream_key(config.seed, "eval"), progress)
    images = grid[:, 0].reshape(num_classes * k, *grid.shape[3:])
    all_images.append(images)
    result = {"guidance_scale": scale, **scorer(images, labels)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    results.append(result)
    if is_main:
      progress.write(f"  guidance {scale:g}: accuracy {result['accuracy']:.3f}, FID {result['fid']:.3f}, "
                     f"diversity {result['diversity']:.3f} ({result['seconds']:.0f}s)")
  progress.close()

  settings = sampling_settings(s, sampler.num_steps, sampler.forward_passes_per_sample)
  report = json_safe({
      "step": step,
      "config": {**settings,
                 "samples_per_digit": k,
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
    save_samples(os.path.join(out, "samples.npz"), np.concatenate(all_images), np.tile(labels, len(scales)),
                 np.repeat(np.asarray(scales, np.float32), len(labels)), class_names,
                 setting=settings)
    save_report(report, out, "eval", plot, format_table(report))
  return report
