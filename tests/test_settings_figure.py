"""scripts/settings_figure.py: a column per evaluation setting, a row per digit, from eval samples files."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from glide_jax.evaluation.samples_file import save_samples
from helpers.paths import load_script


def eval_dir(path, value_at_scale):
  """An eval samples file with 3 digits x 4 samples at each scale, every pixel `value_at_scale[scale]`."""
  names, scales = ["zero", "one", "two"], sorted(value_at_scale)
  images = np.concatenate([np.full((12, 8, 8, 1), value_at_scale[s], np.uint8) for s in scales])
  prompted = np.tile(np.repeat(np.arange(3), 4), len(scales))
  save_samples(str(path / "samples.npz"), images, prompted, np.repeat(np.float32(scales), 12), names)
  return str(path)


def test_a_column_per_setting_from_its_scale(tmp_path, monkeypatch, capsys):
  dark = eval_dir(tmp_path / "a", {2.0: 0, 3.0: 255})
  grey = eval_dir(tmp_path / "b", {2.0: 128})
  out = str(tmp_path / "figure.png")
  monkeypatch.setattr(sys, "argv", ["settings_figure.py", out, f"A g2={dark}:2", f"B g2={grey}:2", "--per_cell=2"])
  load_script("settings_figure").main()
  assert "3 digits x 2 settings, 2 samples each" in capsys.readouterr().out
  figure = np.asarray(Image.open(out).convert("L")).astype(int)
  # Each row holds the two settings' cells side by side: A's at guidance 2 (black), then B's (grey), two
  # samples each, zoomed 2x (16 px wide), on a white background.
  row = figure[figure.shape[0] - 12]  # Through the last digit's cells.
  black, grey_px = np.flatnonzero(row == 0), np.flatnonzero(row == 128)
  assert len(black) == len(grey_px) == 2 * 16
  assert black.max() < grey_px.min()


def test_a_scale_the_file_lacks_is_refused_with_the_scales_it_has(tmp_path, monkeypatch):
  directory = eval_dir(tmp_path / "a", {2.0: 0, 3.0: 255})
  monkeypatch.setattr(sys, "argv", ["settings_figure.py", str(tmp_path / "f.png"), f"A={directory}:1.5"])
  with pytest.raises(SystemExit, match=r"no samples at guidance 1.5; it has \[2.0, 3.0\]"):
    load_script("settings_figure").main()
  assert not os.path.exists(tmp_path / "f.png")
