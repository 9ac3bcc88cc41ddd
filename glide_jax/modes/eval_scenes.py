"""--mode=eval on MNIST scenes: the share of samples whose every digit is right and in its place, per caption
template and guidance scale, and a scene FID, for the captions of config.data.test_split (by default the
held_out split: captions never seen in training).

For each fact of that split, config.eval.samples_per_digit samples are drawn, their prompts alternating
between the fact's phrasings ("a 3 to the left of a 7", "a 7 to the right of a 3"), with the same noise at
every scale. Each sample's four cells are read by the MNIST evaluation classifier at the cell size (trained
and cached on first use), a cell with almost no bright pixels as empty (`scene_reader`); a sample is fully
right when the read layout is one its caption allows, and holds the right digits when the caption's digits are
there in any cells (the gap between the two is placement alone). For relations between two different digits it
also gives how each was drawn (`scene_reader.relation_outcomes`): right, swapped, or one digit in both cells. The
same reader on the split's real scenes gives the **reader** row: its fully-right share is the ceiling the
reading itself allows. FID compares the cells' features side by side (4 x the classifier's feature width)
with the first half of the real scenes; the reader row's FID is the second half's, as many scenes as the
samples, against the same half (the best at that size).
"""

from __future__ import annotations

import math
import os
import time

import jax
import ml_collections
import numpy as np

from glide_jax import data as data_lib
from glide_jax import scenes
from glide_jax.config import guidance_scales
from glide_jax.evaluation import classifier as classifier_lib
from glide_jax.evaluation.classifier_cache import get_or_train_classifier
from glide_jax.evaluation.metrics import fid_from_features
from glide_jax.evaluation.report import json_safe, output_dir, save_report
from glide_jax.evaluation.scene_reader import (
  RELATION_OUTCOMES,
  fully_right,
  read_layouts,
  relation_outcomes,
  right_digits,
  share_by_template,
)
from glide_jax.experiment import Experiment
from glide_jax.rng import stream_key
from glide_jax.sampling import batched
from glide_jax.sampling.images import save_png, sweep_figure


def cell_classifier_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the MNIST classifier that reads one cell: MNIST at half the canvas size, with this
  config's data directory and classifier settings."""
  cells = config.copy_and_resolve_references()
  cells.data.source, cells.data.name, cells.data.caption_feature = "tfds", "mnist", ""
  cells.data.image_size = config.data.image_size // scenes.GRID
  cells.data.train_split, cells.data.test_split = "train", "test"
  return cells


def prompts_for(facts: list, per_fact: int) -> list[str]:
  """per_fact prompts for each fact, alternating between its phrasings."""
  return [scenes.captions_of(f)[j % len(scenes.captions_of(f))] for f in facts for j in range(per_fact)]


def format_scene_table(report: dict) -> str:
  """Fully-right share overall and per template, the right-digits share, and FID, per guidance scale; then how
  relations were drawn (`relation_outcomes`); the reader's row last in each."""
  templates = scenes.TEMPLATES
  fmt = lambda x: "    -" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:5.3f}"
  rows = [(f"{r['guidance_scale']:g}", r) for r in report["results"]] + [("reader", report["reader"])]
  lines = [f"{'guidance':>8}  {'right':>5}  {'digits':>6}  " + "  ".join(f"{t:>8}" for t in templates)
           + f"  {'FID':>8}"]
  for label, r in rows:
    lines.append(f"{label:>8}  {fmt(r['fully_right'])}  {fmt(r['right_digits']):>6}  "
                 + "  ".join(f"{fmt(r['by_template'].get(t)):>8}" for t in templates) + f"  {r['fid']:8.3f}")
  relations = [t for t in templates if any(t in r.get("relations", {}) for _, r in rows)]
  if relations:
    lines.append("Relations of two different digits, the share drawn "
                 + " / ".join(o.replace("_", " ") for o in RELATION_OUTCOMES) + ":")
    lines.append(f"{'guidance':>8}  " + "  ".join(f"{t:>24}" for t in relations))
    for label, r in rows:
      shares = [" ".join(f"{r.get('relations', {}).get(t, {}).get(o, math.nan):.2f}" for o in RELATION_OUTCOMES)
                for t in relations]
      lines.append(f"{label:>8}  " + "  ".join(f"{cell:>24}" for cell in shares))
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples and scores every guidance scale from workdir's latest checkpoint; returns the report written to
  workdir/eval/eval.json (or config.eval.output_dir), with a figure of one sample per fact and scale."""
  exp = Experiment(config, workdir)
  exp.require_not_upsampler("--mode=eval")
  workdir = exp.open_workdir(create=False)
  out = output_dir(config.eval, workdir)  # A bad one is refused before the sampling.
  s, e = config.sample, config.eval
  scales = guidance_scales(s)
  params, step = exp.load_params(s.use_ema)
  sampler = exp.sampler(params)
  is_main = jax.process_index() == 0

  classifier = get_or_train_classifier(cell_classifier_config(config), verbose=is_main)
  outputs = lambda cells: classifier_lib.outputs(classifier.params, cells, e.batch_size)  # noqa: E731
  real = data_lib.load_dataset(config.data, config.data.test_split)
  present = {scenes.fact_of(c[0]) for c in real.captions}
  facts = [f for f in scenes.all_facts() if f in present]
  k = e.samples_per_digit
  prompts = prompts_for(facts, k)

  real_captions = [c[i % len(c)] for i, c in enumerate(real.captions)]
  real_layouts, real_features = read_layouts(np.asarray(real.images), outputs)
  real_right = fully_right(real_layouts, real_captions)
  half = len(real) // 2
  reference, same_size = real_features[:half], real_features[half:half + len(prompts)]
  reader = {"fully_right": float(np.mean(real_right)),
            "right_digits": float(np.mean(right_digits(real_layouts, real_captions))),
            "by_template": share_by_template(real_right, real_captions),
            "relations": relation_outcomes(real_layouts, real_captions),
            "fid": fid_from_features(same_size, reference), "num_scenes": len(real), "num_fid": len(same_size)}

  if is_main:
    print(f"Evaluating step {step}: {k} samples for each of {len(facts)} facts of {config.data.test_split!r} at "
          f"{len(scales)} guidance scale(s), {s.sampler} with {sampler.num_steps} steps. The reader finds "
          f"{reader['fully_right']:.3f} of the real scenes fully right.", flush=True)
  results, all_images, all_right = [], [], []
  progress = batched.progress_bar(len(scales) * len(prompts), "eval")
  for scale in scales:
    start = time.perf_counter()
    grid = exp.sample_grid(sampler, prompts, [scale], 1, stream_key(config.seed, "eval"), progress)
    images = grid[:, 0, 0]
    layouts, features = read_layouts(images, outputs)
    right = fully_right(layouts, prompts)
    all_images.append(images)
    all_right.append(right)
    results.append({"guidance_scale": scale, "fully_right": float(np.mean(right)),
                    "right_digits": float(np.mean(right_digits(layouts, prompts))),
                    "by_template": share_by_template(right, prompts), "relations": relation_outcomes(layouts, prompts),
                    "fid": fid_from_features(features, reference),
                    "num_samples": len(prompts), "seconds": round(time.perf_counter() - start, 2)})
    if is_main:
      progress.write(f"  guidance {scale:g}: fully right {results[-1]['fully_right']:.3f} (the right digits in any "
                     f"places {results[-1]['right_digits']:.3f}), FID "
                     f"{results[-1]['fid']:.3f} ({results[-1]['seconds']:.0f}s)")
  progress.close()

  report = json_safe({
      "step": step,
      "config": {"sampler": s.sampler, "respacing": s.respacing, "sampling_steps": sampler.num_steps,
                 "use_ema": bool(s.use_ema), "samples_per_fact": k, "guidance_scales": scales,
                 "seed": config.seed, "split": config.data.test_split, "scenes": config.data.scenes.to_dict(),
                 "image_size": config.data.image_size},
      "facts": [list(f) for f in facts],
      "classifier": {"directory": classifier.directory, **classifier.info},
      "reader": reader,
      "results": results,
  })
  if is_main:
    os.makedirs(out, exist_ok=True)
    np.savez_compressed(os.path.join(out, "samples.npz"), images=np.stack(all_images), prompts=np.asarray(prompts),
                        guidance=np.asarray(scales, np.float32), fully_right=np.stack(all_right))

    def figure(report: dict, path: str) -> None:
      shown = min(len(facts), 12)
      picked = np.stack(all_images)[:, [i * k for i in range(shown)]]  # [S, P, H, W, C]
      save_png(path, sweep_figure(picked.transpose(1, 0, 2, 3, 4)[:, :, None], prompts[::k][:shown], scales))

    save_report(report, out, "eval", figure, format_scene_table(report))
  return report
