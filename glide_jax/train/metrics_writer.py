"""Where training progress goes: metrics.jsonl, TensorBoard event files and image summaries (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from glide_jax.errors import is_disk_full


class MetricWriter:
  """Writes scalars to `metrics.jsonl` and TensorBoard; images to TensorBoard. A no-op off process 0."""

  def __init__(self, workdir: str, enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      if math.isfinite(float(v)):  # A diverged window's NaN stays in metrics.jsonl; TensorBoard would warn per value.
        self._tb.add_scalar(k, float(v), int(step))

  def write_image(self, step: int, tag: str, image_uint8: np.ndarray) -> None:
    """An HWC (or HW) uint8 image."""
    if not self.enabled:
      return
    image = image_uint8 if image_uint8.ndim == 3 else image_uint8[..., None]
    self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def close(self) -> None:
    """Closes both files. On a full disk the last TensorBoard events are lost, not raised: the error that
    stopped training names the problem (metrics.jsonl is flushed at every write), and an unclosed writer
    would raise again from TensorBoardX's exit handler, as a traceback after that one-line error."""
    if self.enabled:
      self.enabled = False
      self._jsonl.close()
      try:
        self._tb.close()
      except OSError as e:
        if not is_disk_full(e):
          raise


class MetricsWindow:
  """The metrics of the steps since the last row: averaged, timed and written as one row (metrics.jsonl,
  TensorBoard, the progress bar's postfix). The first row also carries the train step's compile time."""

  def __init__(self, writer: MetricWriter, bar: Any = None, compile_s: Optional[float] = None):
    self.writer, self.bar, self.compile_s = writer, bar, compile_s
    self.pending: list[dict[str, jax.Array]] = []
    self.restart_clock()

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self.pending.append(metrics)  # Device arrays: read only when the row is written, so steps never stall.

  def restart_clock(self) -> None:
    """Starts timing afresh, leaving out of steps_per_sec what came between (a sample grid)."""
    self.start = time.perf_counter()

  def summary(self) -> dict[str, float]:
    rows = jax.device_get(self.pending)
    summary = {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}
    summary["nonfinite"] *= len(rows)  # A count per logging window, not a fraction.
    summary["steps_per_sec"] = len(rows) / (time.perf_counter() - self.start)
    if self.compile_s is not None:
      summary["compile_s"], self.compile_s = self.compile_s, None
    return summary

  def write(self, step: int) -> None:
    if not self.pending:
      return
    summary = self.summary()
    self.writer.write_scalars(step, summary)
    if self.bar is not None:
      shown = {k: f"{summary[k]:.4f}" for k in ("loss", "mse", "batch_accuracy") if k in summary}
      self.bar.set_postfix(**shown, steps_per_s=f"{summary['steps_per_sec']:.2f}", refresh=False)
    self.pending = []
    self.restart_clock()
