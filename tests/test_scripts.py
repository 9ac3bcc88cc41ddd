"""scripts/: the lesson's reproduction runs end to end (dry run with the tiny config, as CI can afford)."""

import json
import os
import re
import signal
import subprocess

from helpers.paths import REPO
from helpers.runs import checkpoint_steps, main_env, metric_steps, read, wait_until

SCRIPT = os.path.join(REPO, "scripts", "reproduce_lesson.sh")


def test_reproduce_lesson_dry_run_with_the_tiny_config(tmp_path):
  workdir = tmp_path / "lesson"
  env = dict(main_env(), CONFIG="configs/tiny.py", PER_CELL="1")
  result = subprocess.run(
      ["bash", SCRIPT, str(workdir), "--config.train.num_steps=2",
       f"--config.eval.classifier_dir={tmp_path / 'classifier'}", "--config.eval.classifier_train_split=train[:1024]",
       "--config.eval.classifier_steps=30", "--config.eval.classifier_batch_size=64"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert checkpoint_steps(str(workdir)) == [2]
  assert (workdir / "samples" / "guidance_sweep.png").is_file()
  with open(workdir / "eval" / "eval.json") as f:
    report = json.load(f)
  assert [r["guidance_scale"] for r in report["results"]] == [0.0, 1.0, 2.0, 4.0, 7.0, 10.0, 20.0]
  assert report["config"]["samples_per_digit"] == 7 and report["config"]["sampling_steps"] == 100
  with open(workdir / "timings.json") as f:
    timings = json.load(f)
  assert set(timings) == {"train_s", "sample_s", "eval_s", "device"} and timings["device"].startswith("cpu")
  assert all(timings[k] > 0 for k in ("train_s", "sample_s", "eval_s"))
  # A stage rerun alone keeps the other stages' figures.
  rerun = subprocess.run(["bash", SCRIPT, str(workdir),
                          "--config.train.num_steps=2"], cwd=tmp_path, env=dict(env, STAGES="train"),
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  with open(workdir / "timings.json") as f:
    assert set(json.load(f)) == set(timings)


def test_sigterm_to_the_script_reaches_training_which_saves_and_stops(tmp_path):
  """As `timeout` or a scheduler does: the signal goes to the script's process alone."""
  workdir = tmp_path / "lesson"
  out, err = tmp_path / "out.txt", tmp_path / "err.txt"
  with open(out, "w") as stdout, open(err, "w") as stderr:
    proc = subprocess.Popen(
        ["bash", SCRIPT, str(workdir), "--config.train.num_steps=10000", "--config.train.checkpoint_every=1000",
         "--config.train.log_every=2"], cwd=tmp_path, stdout=stdout, stderr=stderr,
        env=dict(main_env(), CONFIG="configs/tiny.py", STAGES="train sample eval"))
  try:
    assert wait_until(lambda: metric_steps(str(workdir)) or proc.poll() is not None, timeout=300), read(err)[-3000:]
    assert proc.poll() is None, read(err)[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, read(err)[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  stopped = re.search(r"Stopped by SIGTERM after step (\d+): checkpoint saved", read(out))
  assert stopped, read(out) + read(err)[-3000:]
  assert checkpoint_steps(str(workdir)) == [int(stopped.group(1))]
  assert "Stopped by SIGTERM during the train stage; rerun the same command to resume." in read(err)
  assert not (workdir / "samples").exists() and not (workdir / "eval").exists()  # Later stages skipped.
