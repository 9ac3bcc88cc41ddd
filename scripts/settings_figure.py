"""One picture comparing evaluation settings: a row per digit, a column per setting, K samples per cell.

  python scripts/settings_figure.py OUT.png "CFG g2=runs/mnist_cpu/study/cfg_ddpm25:2" \
      "autoguidance g2=runs/mnist_cpu/study/auto_ddpm25:2" [--per_cell=6]

Each argument is LABEL=EVAL_DIR:SCALE: the first K samples of each digit at that guidance scale in
EVAL_DIR/samples.npz (`--mode=eval` draws sample i of every setting from the same noise, so the columns
are paired). Used for docs/quality.md's figure of the guidance methods.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from glide_jax.evaluation.samples_file import load_samples
from glide_jax.sampling.images import save_png, sweep_figure


def cell_images(eval_dir: str, scale: float, per_cell: int) -> tuple[np.ndarray, list[str]]:
  """uint8 [digits, per_cell, H, W, C]: the first samples of each prompted class at `scale`."""
  samples = load_samples(os.path.join(eval_dir, "samples.npz"))
  rows = samples["guidance_scale"] == np.float32(scale)
  if not rows.any():
    raise SystemExit(f"{eval_dir}/samples.npz has no samples at guidance {scale:g}; it has "
                     f"{sorted(set(samples['guidance_scale'].tolist()))}.")
  names = samples["class_names"].tolist()
  images, prompted = samples["images"][rows], samples["prompted"][rows]
  return np.stack([images[prompted == d][:per_cell] for d in range(len(names))]), names


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("settings", nargs="+", help="LABEL=EVAL_DIR:SCALE")
  parser.add_argument("--per_cell", type=int, default=6)
  args = parser.parse_args()
  labels, columns, names = [], [], None
  for setting in args.settings:
    label, _, where = setting.partition("=")
    eval_dir, _, scale = where.rpartition(":")
    cells, names = cell_images(eval_dir, float(scale), args.per_cell)
    labels.append(label)
    columns.append(cells)
  figure = sweep_figure(np.stack(columns, axis=1), names, labels, title="setting")
  save_png(args.out, figure)
  print(f"Wrote {args.out}: {len(names)} digits x {len(labels)} settings, {args.per_cell} samples each.")


if __name__ == "__main__":
  main()
