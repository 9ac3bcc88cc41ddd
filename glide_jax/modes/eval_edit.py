"""--mode=eval_edit (and --mode=eval on an inpainting workdir): how well edits follow their prompts.

The first config.edit.eval_images examples of the test split have config.edit.mask regenerated with the
prompt of another class, (label + 1) mod the number of classes or every other class (config.edit.targets), at
every scale of config.edit.guidance_scales. Per method and scale: **edit accuracy** (the classifier reads the
prompted class), **kept class** (it still reads the original one), **known-region error** (the largest
|edit − original| at uint8 over the kept pixels; 0 by construction) and the **classifier FID** of the edited
images against the test split; the edit accuracy also per prompted class, with its count of edits. The methods:
this workdir's model (an inpainting model, or the replacement method for any other), and for an inpainting run
also the replacement method on its base run (config.edit.base_workdir, else config.train.init_from), side by
side, with the same noise. Beside them, scored the same way, the **nearest-neighbour baseline**
(`editing.nearest`): each edit completed by the training image of the prompted class that best fits the kept
pixels, what real handwriting reaches. Written to workdir/eval/edit_eval.json and edit_eval.png, the edited
images (and the baseline's composites) to edit_samples.npz (`samples_file`).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax import saved_config
from glide_jax.config import base_run_config, guidance_scales
from glide_jax.editing.inputs import edit_method, load_known_mask
from glide_jax.editing.masks import known_region_error
from glide_jax.editing.nearest import edit_targets, nearest_completions
from glide_jax.errors import UserError
from glide_jax.evaluation import metrics
from glide_jax.evaluation.classifier_cache import get_or_train_classifier
from glide_jax.evaluation.report import (
  format_edit_table,
  json_safe,
  output_dir,
  plot_edits,
  sampling_settings,
  save_report,
)
from glide_jax.evaluation.samples_file import save_samples
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling import images as images_lib

_TARGETS = {"next": "(label + 1) mod classes", "all": "every other class"}


def methods_to_compare(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Experiment]]:
  """(method, Experiment) for this workdir and, for an inpainting run, the replacement method on its base."""
  runs = [(edit_method(config), Experiment(config, workdir))]
  base_workdir = config.edit.base_workdir or (config.train.init_from if config.model.inpaint else "")
  if config.model.inpaint and base_workdir:
    base_config = base_run_config(config)
    base = Experiment(base_config, base_workdir)
    check_base_run(base, "config.edit.base_workdir" if config.edit.base_workdir else "config.train.init_from")
    runs.append((edit_method(base_config), base))
  return runs


def check_base_run(base: Experiment, source: str) -> None:
  """A UserError naming `source` (the field that named the base run) when its workdir holds no run, or one
  of another model than the inpainting run's base."""
  directory = os.path.join(base.workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"{source} = {base.workdir!r} holds no base run (no checkpoints/ in it); give the workdir of "
                    f"the run this inpainting model was fine-tuned from, whose replacement-method edits it is "
                    f"compared with.")
  with base.checkpointer(read_only=True) as checkpointer:
    diffs = saved_config.model_config_differences(checkpointer.saved_config(), base.config)
  if diffs:
    raise UserError(f"{source} = {base.workdir!r} holds another model than this inpainting run's base (apart from "
                    f"model.inpaint): {'; '.join(diffs)}. Give the workdir of the run it was fine-tuned from.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Edits and scores the test digits with every method and scale; returns the report it writes."""
  data_lib.require_classes(config.data, "--mode=eval_edit")
  runs = methods_to_compare(config, workdir)
  runs[0][1].require_not_upsampler("--mode=eval_edit")
  workdir = runs[0][1].open_workdir(create=False)
  out = output_dir(config.eval, workdir)  # A bad one is refused before the sampling.
  for _, exp in runs[1:]:
    exp.open_workdir(create=False)
  e, s = config.edit, config.sample
  scales = guidance_scales(e)
  is_main = jax.process_index() == 0
  classifier = get_or_train_classifier(config, verbose=is_main)
  test = data_lib.load_dataset(config.data, config.data.test_split)
  num_classes = len(test.class_names)
  num_images = min(e.eval_images, len(test))
  which, targets = edit_targets(test.labels[:num_images], num_classes, e.targets)
  originals, labels, n = test.images[which], test.labels[which], len(which)
  known_mask = load_known_mask(e.mask, config.data.image_size, config.data.image_size)
  known = np.broadcast_to(known_mask, (n, *known_mask.shape)).copy()
  scorer = metrics.Scorer(classifier, test, config.eval.batch_size)

  def score(edits: np.ndarray) -> dict:
    """The scores of edits uint8 [n, H, W, C] (one per row of `targets`)."""
    _, predictions = scorer.features_and_predictions(edits)
    return {"edit_accuracy": float(np.mean(predictions == targets)),
            "per_target_accuracy": metrics.per_class_mean(predictions == targets, targets, num_classes),
            "per_target_count": np.bincount(targets, minlength=num_classes).tolist(),
            "kept_class": float(np.mean(predictions == labels)),
            "known_region_error": known_region_error(edits[:, None, None], originals, known),
            "fid": scorer.fid(edits)}

  pool = data_lib.load_dataset(config.data, config.data.train_split)
  composites, _ = nearest_completions(originals, targets, known_mask, pool.images, pool.labels)
  baseline = {"method": "nearest neighbour", "pool": f"{config.data.train_split!r}, {len(pool)} images",
              **score(composites)}
  if is_main:
    print(f"Nearest-neighbour baseline ({len(pool)} training images): edit accuracy "
          f"{baseline['edit_accuracy']:.3f}, kept class {baseline['kept_class']:.3f}.", flush=True)
  results, steps, rows = [], {}, [("nearest neighbour", np.nan, composites)]
  for method, exp in runs:
    params, steps[method] = exp.load_params(s.use_ema)
    sampler = exp.sampler(params)
    tokens, mask = exp.prompt_rows(test.class_names, sampler)
    if is_main:
      print(f"Editing {num_images} test images ({e.mask!r} regenerated as {_TARGETS[e.targets]}, {n} edits) by "
            f"the {method} "
            f"(step {steps[method]}, {exp.workdir}), {s.sampler} with {sampler.num_steps} steps.", flush=True)
    for scale in scales:
      start = time.perf_counter()
      # The same key for every method and scale: edit i starts from the same noise.
      flat = batched.sample_in_batches(
          sampler, tokens[targets], mask[targets], np.full((n,), scale, np.float32),
          stream_key(config.seed, "eval"), s.batch_size, exp.mesh.size,
          images=data_lib.to_model_range(originals), known=known)
      edits = images_lib.to_uint8(flat)
      rows.append((method, scale, edits))
      result = {"method": method, "guidance_scale": scale, **score(edits),
                "seconds": round(time.perf_counter() - start, 2)}
      results.append(result)
      if is_main:
        print(f"  guidance {scale:g}: edit accuracy {result['edit_accuracy']:.3f}, kept class "
              f"{result['kept_class']:.3f}, known-region error {result['known_region_error']}, FID "
              f"{result['fid']:.3f} ({result['seconds']:.0f}s)", flush=True)
  report = json_safe({
      "steps": steps,
      "workdirs": {method: exp.workdir for method, exp in runs},
      "config": {"mask": e.mask, "num_images": num_images, "num_edits": n, "targets": e.targets,
                 "target": _TARGETS[e.targets],
                 **sampling_settings(s, sampler.num_steps, sampler.forward_passes_per_sample),
                 "guidance_scales": scales,
                 "seed": config.seed, "dataset": config.data.name, "test_split": config.data.test_split},
      "class_names": list(test.class_names),
      "classifier": {"directory": classifier.directory, **classifier.info},
      "originals": {"accuracy": float(np.mean(scorer.features_and_predictions(originals)[1] == labels)),
                    "fid": scorer.fid(originals)},
      "baseline": baseline,
      "results": results,
  })
  if is_main:
    save_samples(os.path.join(out, "edit_samples.npz"), np.concatenate([r[2] for r in rows]),
                 np.tile(targets, len(rows)), np.repeat([r[1] for r in rows], n), list(test.class_names),
                 method=np.repeat([r[0] for r in rows], n), original=np.tile(labels, len(rows)),
                 image=np.tile(which, len(rows)))
    save_report(report, out, "edit_eval", plot_edits, format_edit_table(report))
  return report
