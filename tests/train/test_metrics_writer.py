"""MetricWriter: one JSON line per logged step, and a close that a full disk cannot turn into a traceback;
MetricsWindow: a window of steps as one averaged row."""

import errno
import json

import jax.numpy as jnp
import pytest

from glide_jax.train.metrics_writer import MetricsWindow, MetricWriter


def test_scalars_go_to_metrics_jsonl_one_line_per_step(tmp_path):
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write_scalars(1, {"loss": 0.5})
  writer.write_scalars(2, {"loss": 0.25, "grad_norm": 3})
  writer.close()
  writer.close()  # A second close does nothing.
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25, "grad_norm": 3.0}]
  assert (tmp_path / "tensorboard").is_dir()


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(str(tmp_path), enabled=False)
  writer.write_scalars(1, {"loss": 0.5})
  writer.close()
  assert list(tmp_path.iterdir()) == []


def _tensorboard_close_raises(writer, monkeypatch, error):
  def close():
    raise error
  monkeypatch.setattr(writer._tb, "close", close)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_close_loses_the_last_events_on_a_full_disk_without_raising(tmp_path, monkeypatch, code):
  writer = MetricWriter(str(tmp_path), enabled=True)
  _tensorboard_close_raises(writer, monkeypatch, OSError(code, "full"))
  writer.close()  # The error that stopped training already names the full disk.
  assert not writer.enabled and writer._jsonl.closed


def test_close_raises_any_other_error(tmp_path, monkeypatch):
  writer = MetricWriter(str(tmp_path), enabled=True)
  _tensorboard_close_raises(writer, monkeypatch, OSError(errno.EACCES, "Permission denied"))
  with pytest.raises(OSError, match="Permission denied"):
    writer.close()


def test_a_window_of_steps_is_one_row_of_means_with_the_compile_time_in_the_first(tmp_path):
  writer = MetricWriter(str(tmp_path), enabled=True)
  window = MetricsWindow(writer, compile_s=12.5)
  window.write(0)  # No steps yet: no row.
  for loss, nonfinite in [(1.0, 0.0), (0.5, 1.0), (0.0, 0.0)]:
    window.add({"loss": jnp.float32(loss), "mse": jnp.float32(loss / 2), "nonfinite": jnp.float32(nonfinite)})
  window.write(3)
  window.add({"loss": jnp.float32(0.25), "mse": jnp.float32(0.125), "nonfinite": jnp.float32(0.0)})
  window.write(4)
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [3, 4]
  assert rows[0]["loss"] == pytest.approx(0.5) and rows[0]["mse"] == pytest.approx(0.25)
  assert rows[0]["nonfinite"] == pytest.approx(1.0)  # A count over the window, not a fraction.
  assert rows[0]["compile_s"] == 12.5 and "compile_s" not in rows[1]
  assert rows[0]["steps_per_sec"] > 0 and rows[1]["loss"] == 0.25


def test_a_non_finite_value_goes_to_metrics_jsonl_but_not_to_tensorboard(tmp_path, monkeypatch):
  writer = MetricWriter(str(tmp_path), enabled=True)
  logged = []
  monkeypatch.setattr(writer._tb, "add_scalar", lambda tag, value, step: logged.append((tag, value, step)))
  writer.write_scalars(3, {"loss": float("nan"), "mse": float("inf"), "nonfinite": 2.0})
  writer.close()
  assert logged == [("nonfinite", 2.0, 3)]
  with open(tmp_path / "metrics.jsonl") as f:
    row = json.loads(f.read())
  assert row["step"] == 3 and row["loss"] != row["loss"] and row["mse"] == float("inf")
