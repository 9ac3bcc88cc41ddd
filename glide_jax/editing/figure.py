"""The edit figure: a row per image; columns original, masked, then one edit per prompt and guidance scale."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from glide_jax.sampling.images import label_font

MASKED_GREY = 128  # How the masked figure column shows the pixels to generate.


def edit_figure(originals: np.ndarray, known: np.ndarray, edits: np.ndarray, sources: Sequence[str],
                prompts: Sequence[str], scales: Sequence[float], zoom: int = 3) -> np.ndarray:
  """RGB uint8 figure from originals [N, H, W, C], known [H, W, 1] and edits [N, P, S, H, W, C]."""
  n, p, s, h, w, c = edits.shape
  masked = np.where(known[None] > 0.5, originals, MASKED_GREY).astype(np.uint8)
  columns = [originals, masked] + [edits[:, i, j] for i in range(p) for j in range(s)]
  titles = ["original", "masked"] + [f"{prompts[i][:12]!r}" + (f" @{scales[j]:g}" if s > 1 else "")
                                     for i in range(p) for j in range(s)]
  cell, gap, font = w * zoom, 6, label_font(12)
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  col_w = max(cell, *(int(measure.textlength(t, font=font)) + 4 for t in titles))
  label_w = 8 + max(int(measure.textlength(str(src)[-16:], font=font)) for src in sources)
  header_h = 24
  canvas = Image.new("RGB", (label_w + len(columns) * (col_w + gap) + gap, header_h + n * (h * zoom + gap) + gap),
                     "white")
  draw = ImageDraw.Draw(canvas)
  for k, title in enumerate(titles):
    x0 = label_w + gap + k * (col_w + gap)
    draw.text((x0 + col_w // 2, header_h - 6), title, fill="black", font=font, anchor="ms")
  for row in range(n):
    y0 = header_h + gap + row * (h * zoom + gap)
    draw.text((4, y0 + h * zoom // 2), str(sources[row])[-16:], fill="black", font=font, anchor="lm")
    for k, column in enumerate(columns):
      tile = column[row].repeat(zoom, axis=0).repeat(zoom, axis=1)
      tile = np.repeat(tile, 3, axis=-1) if c == 1 else tile
      canvas.paste(Image.fromarray(tile), (label_w + gap + k * (col_w + gap) + (col_w - cell) // 2, y0))
  return np.asarray(canvas)
