"""Running main.py on the tiny config in subprocesses, and looking at what a run left in its workdir."""

import atexit
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time

import jax

from configs import tiny, tiny_clip
from glide_jax.experiment import Experiment
from helpers.forked_main import MainServer
from helpers.paths import REPO
from helpers.xla import HOST_DEVICES, xla_flags

TMP_MARK = "orbax-checkpoint-tmp"


def main_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(HOST_DEVICES)
  env["JAX_PLATFORMS"] = "cpu"
  # Cache even quick compiles: every restart would otherwise recompile Orbax's dozens of small save programs.
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def main_cmd(workdir, *overrides, mode="train"):
  return [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--mode={mode}", *overrides]


def main_server() -> MainServer:
  """This test process's main.py server (started on first use): forked main.py runs that skip ~2 s of imports."""
  global _SERVER
  if _SERVER is None:
    _SERVER = MainServer(main_env(), tempfile.mkdtemp(prefix="main_server_"))
    atexit.register(_SERVER.close)
  return _SERVER


_SERVER = None


def run_main(workdir, *overrides, mode="train", timeout=300):
  """main.py on the tiny config, to its end: a forked child of `main_server()` (CompletedProcess, text)."""
  return main_server().run(main_cmd(workdir, *overrides, mode=mode)[2:], timeout=timeout)


def popen_main(workdir, log_prefix, *overrides, fresh=False):
  """main.py on the tiny config, running, output in log_prefix.out/.err: a forked child of `main_server()`, or
  (fresh) a new interpreter, for tests of what happens while main.py starts up."""
  if not fresh:
    return main_server().start(main_cmd(workdir, *overrides)[2:], stdout=f"{log_prefix}.out",
                               stderr=f"{log_prefix}.err")
  with open(f"{log_prefix}.out", "w") as out, open(f"{log_prefix}.err", "w") as err:
    return subprocess.Popen(main_cmd(workdir, *overrides), cwd=REPO, env=main_env(), stdout=out, stderr=err)


def read(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def wait_until(predicate, timeout, interval=0.05):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(interval)
  return predicate()


def checkpoint_steps(workdir):
  """Finished checkpoints (Orbax renames a step's temporary directory to the bare number when done)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def tmp_checkpoints(workdir):
  directory = os.path.join(workdir, "checkpoints")
  try:
    return [n for n in os.listdir(directory) if TMP_MARK in n]
  except FileNotFoundError:
    return []


def metric_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [int(m) for m in re.findall(r'"step": (\d+)', read(path))]


def progress_counts(err_path):
  """Step counts the tqdm bar printed so far (its first entry is the step the run started at)."""
  return [int(n) for n in re.findall(r"\|\s*(\d+)/\d+ \[", read(err_path))]


def resumed_from(text):
  return [int(n) for n in re.findall(r"Resuming from the checkpoint at step (\d+)", text)]


def snapshot(root):
  """{relative path: content hash or 'dir'} of everything under root (or of root itself if a file)."""
  def digest(path):
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  if os.path.isfile(root):
    return {".": digest(root)}
  tree = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      tree[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
    for f in filenames:
      tree[os.path.relpath(os.path.join(dirpath, f), root)] = digest(os.path.join(dirpath, f))
  return tree


def assert_nothing_removed_or_changed(before, after):
  missing = sorted(set(before) - set(after))
  changed = sorted(k for k in before if k in after and before[k] != after[k])
  assert not missing and not changed, f"deleted: {missing[:10]}, changed: {changed[:10]}"


def restore_checkpoint(config, workdir, step=None):
  """The TrainState of a checkpoint, restored in this process (its single device)."""
  exp = Experiment(config, str(workdir))
  with exp.checkpointer(read_only=True) as checkpointer:
    return jax.device_get(exp.restore_state(checkpointer, step))


def corrupt_checkpoint(workdir, step):
  """Overwrites the array data files and the OCDBT manifests of every item of a checkpoint with garbage."""
  paths = []
  for item in ("params", "ema_params", "training", "state"):
    item_dir = os.path.join(workdir, "checkpoints", str(step), item)
    if os.path.isdir(item_dir):
      paths += [os.path.join(item_dir, "manifest.ocdbt")]
      paths += [os.path.join(item_dir, "d", n) for n in os.listdir(os.path.join(item_dir, "d"))]
  assert len(paths) >= 2
  for path in paths:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.write((b"\xde\xad\xbe\xef" * (size // 4 + 1))[:size])


def tiny_config(**train):
  config = tiny.get_config()
  for k, v in train.items():
    config.train[k] = v
  return config


def classifier_overrides(directory) -> dict:
  """How the tests that score the tiny model's samples train its evaluation classifier (16x16 MNIST; about 0.8
  test accuracy: enough to tell digits apart), cached in (or read from) `directory`; conftest's
  tiny_classifier_dir is one such directory for every test that does not test the training itself."""
  return {"eval.classifier_train_split": "train[:1024]", "eval.classifier_steps": 60,
          "eval.classifier_batch_size": 64, "eval.classifier_dir": str(directory)}


def with_classifier(config, directory):
  """config with classifier_overrides(directory)."""
  config.update_from_flattened_dict(classifier_overrides(directory))
  return config


def classifier_flags(directory) -> list[str]:
  """classifier_overrides(directory) as main.py's command-line overrides."""
  return [f"--config.{k}={v}" for k, v in classifier_overrides(directory).items()]


def tiny_clip_config(**train):
  """configs/tiny_clip.py (a noised CLIP of the tiny model's images and noise) with config.train overrides."""
  config = tiny_clip.get_config()
  for k, v in train.items():
    config.train[k] = v
  return config
