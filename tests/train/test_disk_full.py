"""A full disk while saving a checkpoint: one `error:` paragraph naming the checkpoint that is intact, and
the rerun (with space again) resumes from it."""

import errno
import os
import shutil
import subprocess
import uuid
import warnings

import orbax.checkpoint as ocp
import pytest

from glide_jax.errors import UserError, is_disk_full
from glide_jax.modes.train import run as train
from helpers.runs import checkpoint_steps, resumed_from, run_main, tiny_config


def test_is_disk_full_sees_through_library_wrapping():
  assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "x": Failed writing: [OS error: No space left on device]')
  assert is_disk_full(wrapped)
  try:
    try:
      raise OSError(errno.EDQUOT, "quota")
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as e:
    assert is_disk_full(e)
  assert not is_disk_full(ValueError("DATA_LOSS: bad manifest")) and not is_disk_full(None)


def test_a_failed_save_on_a_full_disk_is_a_user_error_and_the_rerun_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  original = ocp.CheckpointManager.save

  def full_from_step_4(self, step, *args, **kwargs):
    if step >= 4:
      raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "checkpoints", str(step)))
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_from_step_4)
  with pytest.raises(UserError, match=r"the disk is full\. Training stopped; the checkpoint at step 2 is intact"):
    train(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  assert checkpoint_steps(workdir) == [2]
  # Python's exit-time warning about the failed save's unstarted writes would follow the error message.
  with warnings.catch_warnings(record=True) as caught:
    warnings.warn("coroutine 'async_serialize_from_host.<locals>.write_fragment' was never awaited", RuntimeWarning)
    warnings.warn("coroutine 'something_else' was never awaited", RuntimeWarning)
  assert [str(w.message) for w in caught] == ["coroutine 'something_else' was never awaited"]
  monkeypatch.setattr(ocp.CheckpointManager, "save", original)
  state = train(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  assert int(state.step) == 6 and checkpoint_steps(workdir) == [2, 4, 6]


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 6 MB tmpfs (a tiny checkpoint is 2.5-4 MB), where this machine allows mounting one (root)."""
  mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
  mount.mkdir()
  if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                                     capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_through_main(small_tmpfs):
  workdir = small_tmpfs / "run"
  flags_ = ["--config.train.num_steps=6", "--config.train.checkpoint_every=2"]
  result = run_main(workdir, *flags_)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "RESOURCE_EXHAUSTED" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and result.stderr.rstrip().endswith(lines[0]), result.stderr[-3000:]
  intact = checkpoint_steps(workdir)
  # Which write meets the full disk first (a checkpoint, or the metrics and event files beside it) depends
  # on timing; either way it is one paragraph, and a failed checkpoint names the one that is intact.
  if lines[0].startswith("error: Cannot write a checkpoint"):
    assert lines[0].startswith(f"error: Cannot write a checkpoint in {workdir}/checkpoints: the disk is full")
    assert intact and f"the checkpoint at step {intact[-1]} is intact" in lines[0]
  else:
    assert lines[0].startswith("error: the disk is full (OSError: [Errno 28] No space left on device)"), lines[0]
  # With room again (the workdir moved to a larger disk), the rerun resumes from it.
  bigger = small_tmpfs.parent / "bigger"
  shutil.copytree(workdir, bigger)
  result = run_main(bigger, *flags_)
  assert result.returncode == 0, result.stderr[-3000:]
  assert resumed_from(result.stdout) == intact[-1:]
  assert checkpoint_steps(bigger)[-1] == 6
