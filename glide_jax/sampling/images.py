"""Image output: uint8 conversion, grids, the labelled guidance-sweep figure and PNG files."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[−1, 1] floats → uint8 [0, 255] (GLIDE: round((x + 1) · 127.5))."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int, cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
  """uint8 [N, H, W, C] (N ≤ rows·cols, row-major) → one uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C]."""
  n, h, w, c = images.shape
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, np.uint8)
  for i in range(min(n, rows * cols)):
    r, k = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
  Image.fromarray(image).save(path)


def label_font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
    return ImageFont.load_default()


def sweep_figure(images: np.ndarray, prompts: Sequence[str], scales: Sequence[float | str], zoom: int = 2,
                 title: str = "guidance scale") -> np.ndarray:
  """The reference lesson's table as one labelled picture: a row per prompt, a column per guidance scale (or
  per any setting: a string `scales` entry is its column's label, under `title`).

  images: uint8 [P, S, K, H, W, C] (K samples per cell, side by side). Returns RGB uint8.
  """
  p, s, k, h, w, c = images.shape
  cells = images.repeat(zoom, axis=3).repeat(zoom, axis=4)
  if c == 1:
    cells = np.repeat(cells, 3, axis=-1)
  cell_w, cell_h, gap = k * w * zoom + (k - 1) * 2, h * zoom, 8
  font = label_font(14)
  label_w = 12 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(t)[:24], font=font))
                     for t in list(prompts) + ["prompt"])
  header_h = 40
  width = label_w + s * (cell_w + gap) + gap
  height = header_h + p * (cell_h + gap) + gap
  canvas = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(canvas)
  draw.text((6, 4), title, fill="black", font=font)
  for j, scale in enumerate(scales):
    x0 = label_w + gap + j * (cell_w + gap)
    label = scale if isinstance(scale, str) else f"{scale:g}"
    draw.text((x0 + cell_w // 2, header_h - 10), label, fill="black", font=font, anchor="ms")
  for i, prompt in enumerate(prompts):
    y0 = header_h + gap + i * (cell_h + gap)
    draw.text((6, y0 + cell_h // 2), repr(str(prompt)[:24]), fill="black", font=font, anchor="lm")
    for j in range(s):
      x0 = label_w + gap + j * (cell_w + gap)
      for m in range(k):
        canvas.paste(Image.fromarray(cells[i, j, m]), (x0 + m * (w * zoom + 2), y0))
  return np.asarray(canvas)
