"""MetricWriter: one JSON line per logged step, and a close that a full disk cannot turn into a traceback."""

import errno
import json

import pytest

from glide_jax.train.metrics_writer import MetricWriter


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
