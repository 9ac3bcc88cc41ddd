"""Robustness: SIGTERM, SIGKILL at random moments (bit-exact recovery), damaged checkpoints, non-finite
steps, a changed model on resume, and user errors through main.py (one paragraph, exit code 2)."""

import concurrent.futures
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from configs import tiny
from helpers.trees import assert_trees_equal
from glide_jax import checkpoint as ckpt_lib
from glide_jax import data as data_lib
from glide_jax import sharding as sharding_lib
from glide_jax.errors import TrainingDivergedError, UserError
from glide_jax.train import Experiment, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DEVICES = 2  # Every main.py subprocess gets exactly this many CPU devices, whatever the machine.
TMP_MARK = "orbax-checkpoint-tmp"

# Reading a damaged checkpoint leaves TensorStore callbacks firing into Orbax's closed event loop (printed,
# harmless); they surface at random later points as unraisable-exception warnings.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ---------------------------------------------------------------------------------------------------------
# Helpers.


def main_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={HOST_DEVICES}"
  env["JAX_PLATFORMS"] = "cpu"
  # Cache even quick compiles: every restart would otherwise recompile Orbax's dozens of small save programs.
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def main_cmd(workdir, *overrides, mode="train"):
  return [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--mode={mode}", *overrides]


def run_main(workdir, *overrides, mode="train", timeout=300):
  return subprocess.run(main_cmd(workdir, *overrides, mode=mode), cwd=REPO, env=main_env(), capture_output=True,
                        text=True, timeout=timeout)


def popen_main(workdir, log_prefix, *overrides):
  out, err = open(f"{log_prefix}.out", "w"), open(f"{log_prefix}.err", "w")
  proc = subprocess.Popen(main_cmd(workdir, *overrides), cwd=REPO, env=main_env(), stdout=out, stderr=err)
  out.close()
  err.close()
  return proc


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
  exp = Experiment.from_config(config)
  checkpointer = exp.checkpointer(str(workdir), read_only=True)
  try:
    state, _ = checkpointer.restore(exp.abstract_state, step)
  finally:
    checkpointer.close()
  return jax.device_get(state)


def corrupt_checkpoint(workdir, step):
  """Overwrites the array data files and the OCDBT manifest of a checkpoint's state with garbage."""
  state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
  paths = [os.path.join(state_dir, "manifest.ocdbt")]
  paths += [os.path.join(state_dir, "d", n) for n in os.listdir(os.path.join(state_dir, "d"))]
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


# ---------------------------------------------------------------------------------------------------------
# 1. SIGTERM: finish the step, save, say so in one line, exit 0; the rerun resumes there.


def test_sigterm_saves_the_current_step_and_the_rerun_resumes_there(tmp_path):
  workdir = tmp_path / "run"
  flags_ = ["--config.train.checkpoint_every=1000", "--config.train.log_every=2"]
  proc = popen_main(workdir, str(tmp_path / "first"), "--config.train.num_steps=10000", *flags_)
  try:
    stepping = wait_until(lambda: metric_steps(workdir) or proc.poll() is not None, timeout=300)
    assert stepping and proc.poll() is None, read(tmp_path / "first.err")[-3000:]
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  out, err = read(tmp_path / "first.out"), read(tmp_path / "first.err")
  assert rc == 0, err[-3000:]
  assert "Traceback" not in err
  lines = [line for line in out.splitlines() if "Stopped by" in line]
  assert len(lines) == 1, out
  match = re.fullmatch(r"Stopped by SIGTERM after step (\d+): checkpoint saved in (.+); rerun the same command "
                       r"to resume\.", lines[0])
  assert match, lines[0]
  n = int(match.group(1))
  assert match.group(2) == str(workdir / "checkpoints")
  logged = metric_steps(workdir)
  assert n >= max(logged) and n < 1000  # The last finished step, not a periodic save.
  assert checkpoint_steps(workdir) == [n]
  assert not tmp_checkpoints(workdir)

  result = run_main(workdir, f"--config.train.num_steps={n + 3}", *flags_)
  assert result.returncode == 0, result.stderr[-3000:]
  assert resumed_from(result.stdout) == [n], result.stdout
  assert checkpoint_steps(workdir) == [n, n + 3]
  assert metric_steps(workdir)[-1] == n + 3


# ---------------------------------------------------------------------------------------------------------
# 2. SIGKILL at random moments (some in the middle of a checkpoint save): the end result is bit-exact.

CHAOS_STEPS = 40
CHAOS_FLAGS = [f"--config.train.num_steps={CHAOS_STEPS}", "--config.train.checkpoint_every=4",
               "--config.train.keep_checkpoints=3", "--config.train.log_every=4"]
CHAOS_KILLS = 5


def _kill_at_random(proc, workdir, err_path, rng, start, during_save):
  """SIGKILLs a run once it has saved a new checkpoint (so every run makes progress): as soon as its next
  save is in flight (during_save), or a seeded random number of steps and seconds later. None if the run
  ended first."""
  def ended_or(predicate):
    return lambda: proc.poll() is not None or predicate()
  assert wait_until(ended_or(lambda: max(checkpoint_steps(workdir), default=0) > start), timeout=300,
                    interval=0.01), read(err_path)[-3000:]
  if during_save:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not tmp_checkpoints(workdir):
      time.sleep(0.001)
  else:
    target = max(progress_counts(err_path), default=0) + rng.randint(0, 3)
    assert wait_until(ended_or(lambda: max(progress_counts(err_path), default=0) >= target), timeout=120,
                      interval=0.01)
    end = time.monotonic() + rng.uniform(0.0, 0.3)
    while proc.poll() is None and time.monotonic() < end:
      time.sleep(0.005)
  if proc.poll() is not None:
    return None
  in_save = bool(tmp_checkpoints(workdir))
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  counts = progress_counts(err_path)
  return {"during_save": during_save, "tmp_left": bool(tmp_checkpoints(workdir)) and in_save,
          "progress": counts[-1] if counts else None, "checkpoints": checkpoint_steps(workdir)}


def test_sigkill_at_random_moments_resumes_bit_exactly(tmp_path):
  straight, chaos = tmp_path / "straight", tmp_path / "chaos"
  reference = popen_main(straight, str(tmp_path / "straight"), *CHAOS_FLAGS)  # Runs alongside.
  try:
    rng = random.Random(20240611)
    kills, resumes = [], []
    for i in range(CHAOS_KILLS + 1):
      before = checkpoint_steps(chaos)
      prefix = str(tmp_path / f"run{i}")
      proc = popen_main(chaos, prefix, *CHAOS_FLAGS)
      try:
        if i < CHAOS_KILLS:
          kill = _kill_at_random(proc, chaos, prefix + ".err", rng, max(before, default=0), during_save=i in (1, 3))
          assert kill is not None, f"run {i} finished before its kill; the kills are too late: {kills}"
          kills.append(kill)
        else:
          assert proc.wait(timeout=300) == 0, read(prefix + ".err")[-3000:]
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
      # Every restart after a checkpoint existed resumed from the newest one, never from step 0.
      resumed = resumed_from(read(prefix + ".out"))
      assert resumed == ([max(before)] if before else []), (i, before, resumed, kills)
      resumes += resumed

    assert reference.wait(timeout=300) == 0, read(tmp_path / "straight.err")[-3000:]
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()
  assert any(k["tmp_left"] for k in kills), f"no kill landed in the middle of a checkpoint save: {kills}"
  assert len(resumes) == CHAOS_KILLS and resumes == sorted(set(resumes)), (resumes, kills)  # Always onwards.
  assert not tmp_checkpoints(chaos)
  assert checkpoint_steps(chaos) == checkpoint_steps(straight) == [32, 36, 40]

  config = tiny_config(num_steps=CHAOS_STEPS, checkpoint_every=4, keep_checkpoints=3, log_every=4)
  a, b = restore_checkpoint(config, chaos), restore_checkpoint(config, straight)
  assert int(a.step) == int(b.step) == CHAOS_STEPS
  assert_trees_equal(a.params, b.params)
  assert_trees_equal(a.ema_params, b.ema_params)
  assert_trees_equal(a.opt_state, b.opt_state)
  assert int(a.nonfinite_streak) == int(b.nonfinite_streak) == 0


# ---------------------------------------------------------------------------------------------------------
# 3. A damaged latest checkpoint is skipped (with a warning); if all are damaged it is an error.


@pytest.fixture(scope="module")
def four_steps_once(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("four_steps") / "run")
  train_and_evaluate(tiny_config(num_steps=4, checkpoint_every=2), workdir)
  assert checkpoint_steps(workdir) == [2, 4]
  return workdir


@pytest.fixture
def four_steps(four_steps_once, tmp_path):
  """A fresh copy of a workdir trained 4 tiny steps with checkpoints at 2 and 4."""
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps_once, workdir)
  return workdir


def test_damaged_latest_checkpoint_is_skipped(four_steps, capsys):
  workdir = four_steps
  corrupt_checkpoint(workdir, 4)
  damaged = snapshot(os.path.join(workdir, "checkpoints", "4"))
  with pytest.warns(UserWarning) as record:
    state = train_and_evaluate(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  messages = [str(w.message) for w in record]
  assert any("Checkpoint at step 4" in m and "damaged" in m for m in messages), messages
  assert not any("Checkpoint at step 2" in m for m in messages), messages
  assert resumed_from(capsys.readouterr().out) == [2]
  assert int(state.step) == 6
  assert checkpoint_steps(workdir) == [2, 4, 6]
  # The damaged checkpoint was set aside, not deleted, so step 4 could be saved again.
  assert snapshot(os.path.join(workdir, "damaged_checkpoints", "4")) == damaged
  # The re-saved step 4 reads back.
  assert int(restore_checkpoint(tiny_config(), workdir, step=4).step) == 4


def test_every_checkpoint_damaged_is_a_user_error_and_deletes_nothing(four_steps):
  workdir = four_steps
  corrupt_checkpoint(workdir, 2)
  corrupt_checkpoint(workdir, 4)
  before = snapshot(workdir)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(UserError, match=r"Every checkpoint in .* is damaged") as info:
      train_and_evaluate(tiny_config(num_steps=6, checkpoint_every=2), workdir)
  assert "step 4" in str(info.value) and "step 2" in str(info.value)
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------------------
# 4. Non-finite steps are skipped; too many in a row stop training with the checkpoint kept.


def test_train_step_skips_a_nonfinite_batch():
  config = tiny.get_config()
  exp = Experiment.from_config(config)
  step_fn = exp.train_step_fn()  # glide_jax.train_step.train_step, jitted over the mesh as the loop runs it.
  batches = exp.batch_source()
  rng = jax.random.key(3)
  good = batches(0)
  bad = dict(good, images=np.full_like(good["images"], np.nan))

  state = exp.init_fn()
  initial = jax.device_get(state)  # The state is donated to the step: keep a host copy.
  for k in (1, 2):
    state, metrics = step_fn(state, sharding_lib.put_batch(bad, exp.mesh), rng)
    now = jax.device_get(state)
    assert int(now.step) == k
    assert int(now.nonfinite_streak) == k
    assert float(metrics["nonfinite"]) == 1.0
    assert int(metrics["nonfinite_streak"]) == k
    assert_trees_equal(now.params, initial.params)
    assert_trees_equal(now.ema_params, initial.ema_params)
    assert_trees_equal(now.opt_state, initial.opt_state)

  state, metrics = step_fn(state, sharding_lib.put_batch(good, exp.mesh), rng)
  now = jax.device_get(state)
  assert int(now.step) == 3 and int(now.nonfinite_streak) == 0
  assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
  # (Zero-initialised output layers block most gradients on the first update, so not every leaf moves.)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), now.params, initial.params)
  assert any(jax.tree_util.tree_leaves(changed))
  counts = [int(x) for x in jax.tree_util.tree_leaves(now.opt_state) if np.ndim(x) == 0]
  assert counts and all(c == 1 for c in counts)  # Adam counted exactly the one good step.
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(now.params))


def test_too_many_nonfinite_steps_stop_training_and_keep_the_checkpoint(tmp_path, monkeypatch):
  original = data_lib.BatchSource.__call__

  def nan_from_step_2(self, step):
    batch = original(self, step)
    if step >= 2:
      batch["images"] = np.full_like(batch["images"], np.nan)
    return batch

  monkeypatch.setattr(data_lib.BatchSource, "__call__", nan_from_step_2)
  workdir = str(tmp_path / "run")
  config = tiny_config(num_steps=20, checkpoint_every=2, max_nonfinite_steps=3, log_every=1)
  with pytest.raises(TrainingDivergedError) as info:
    train_and_evaluate(config, workdir)
  message = str(info.value)
  assert "not finite for 3 steps in a row" in message, message
  kept = re.search(r"The last checkpoint in (\S+) \(step (\d+)\) is kept", message)
  assert kept, message
  assert kept.group(1) == os.path.join(workdir, "checkpoints")
  assert 2 in checkpoint_steps(workdir)
  assert int(kept.group(2)) == max(checkpoint_steps(workdir))
  # The steps were skipped: the kept checkpoint holds the finite parameters of step 2.
  state2 = restore_checkpoint(config, workdir, step=2)
  latest = restore_checkpoint(config, workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(latest.params))
  assert_trees_equal(latest.params, state2.params)
  assert_trees_equal(latest.ema_params, state2.ema_params)
  nonfinite = [m for m in read(os.path.join(workdir, "metrics.jsonl")).splitlines() if '"nonfinite": 1.0' in m]
  assert len(nonfinite) >= 3


# ---------------------------------------------------------------------------------------------------------
# 5. Resuming with another model config names the differing fields.


def test_resume_with_another_model_config_is_a_user_error(tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config(num_steps=2), workdir)
  before = snapshot(workdir)
  config = tiny_config(num_steps=4)
  config.model.model_channels = 64
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    with pytest.raises(UserError) as info:
      train_and_evaluate(config, workdir)
  message = str(info.value)
  assert "model.model_channels: 32 in the checkpoint, 64 now" in message, message
  assert "damaged" not in message
  assert not [w for w in record if "damaged" in str(w.message)]  # Not mistaken for a damaged checkpoint.
  assert_nothing_removed_or_changed(before, snapshot(workdir))


# ---------------------------------------------------------------------------------------------------------
# 6. User errors through main.py: "error: ..." on stderr, exit code 2, no traceback, nothing deleted.

LONG_PROMPT = "a handwritten seven drawn slowly in thick dark ink"  # 50 characters; tiny text_ctx is 8.
assert len(LONG_PROMPT) > 8 * 6

# (id, mode, workdir kind, overrides, a regex the error message must match)
USER_ERRORS = [
    ("unknown_key", "train", "trained", ["--config.train.nope=1"], r"unknown config field.*nope"),
    ("ill_typed", "train", "trained", ["--config.train.batch_size=abc"],
     r"--config\.train\.batch_size=abc: invalid literal for int"),
    # tiny downsamples once, so 17 (not 18, which is even) is indivisible.
    ("image_size_indivisible", "train", "trained", ["--config.data.image_size=17"],
     r"data\.image_size = 17 is invalid.*divisible by 2"),
    ("attention_never_reached", "train", "trained", ["--config.model.attention_resolutions=(5,)"],
     r"attention_resolutions.*never works at 5x5"),
    ("batch_not_divisible", "train", "trained", ["--config.train.batch_size=15"],
     r"batch_size = 15 is not divisible by the 2 devices"),
    ("workdir_is_a_file", "train", "file", [], r"is a file"),
    ("missing_dataset", "train", "trained", ["--config.data.data_dir=/nonexistent"],
     r"dataset 'mnist' was not found under '/nonexistent'"),
    ("empty_prompts", "sample", "trained", ["--config.sample.prompts= , "], r"holds no prompt"),
    ("non_utf8_prompt_file", "sample", "trained", ["--config.sample.prompt_file={latin1_file}"], r"not UTF-8"),
    ("negative_guidance", "sample", "trained", ["--config.sample.guidance_scales=(-1.,)"],
     r"guidance_scales has \[-1\.0\]"),
    ("nan_guidance", "sample", "trained", ["--config.sample.guidance_scales=nan"], r"guidance_scales has \[nan\]"),
    ("guidance_not_a_number", "sample", "trained", ["--config.sample.guidance_scales=(one,)"],
     r"guidance_scales = .*is invalid: give numbers"),
    ("zero_sampling_steps", "sample", "trained", ["--config.sample.respacing=0"], r"respacing '0'.*at least 1"),
    ("unknown_sampler", "sample", "trained", ["--config.sample.sampler=euler"], r"Unknown sampler 'euler'"),
    ("unknown_respacing", "sample", "trained", ["--config.sample.respacing=fastest"], r"Unknown respacing 'fastest'"),
    ("no_checkpoint", "sample", "empty", [], r"No checkpoint in"),
]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny checkpoint at step 2 (trained in this process; main.py restores it onto 2 devices)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train_and_evaluate(tiny_config(num_steps=2), workdir)
  assert checkpoint_steps(workdir) == [2]
  return workdir


def _prepare(kind, base, trained_workdir):
  if kind == "trained":
    workdir = os.path.join(base, "workdir")
    shutil.copytree(trained_workdir, workdir)
  elif kind == "file":
    workdir = os.path.join(base, "a_file")
    with open(workdir, "w") as f:
      f.write("keep me\n")
  else:
    workdir = os.path.join(base, "empty")
    os.makedirs(workdir)
  return workdir


@pytest.fixture(scope="module")
def main_results(tmp_path_factory, trained_workdir):
  """Runs every USER_ERRORS case and the long-prompt sampling through main.py, a few at a time."""
  base = tmp_path_factory.mktemp("user_errors")
  latin1_file = os.path.join(base, "prompts_latin1.txt")
  with open(latin1_file, "wb") as f:
    f.write("sept en fran\u00e7ais, \u00e9crit \u00e0 la main\n".encode("latin-1"))

  def run_case(case_id, mode, kind, overrides):
    case_dir = os.path.join(base, case_id)
    os.makedirs(case_dir)
    workdir = _prepare(kind, case_dir, trained_workdir)
    before = snapshot(workdir)
    result = run_main(workdir, *[o.format(latin1_file=latin1_file) for o in overrides], mode=mode)
    return workdir, before, snapshot(workdir), result

  jobs = {case_id: (case_id, mode, kind, overrides) for case_id, mode, kind, overrides, _ in USER_ERRORS}
  jobs["long_prompt"] = ("long_prompt", "sample", "trained",
                         [f"--config.sample.prompts={LONG_PROMPT}", "--config.sample.guidance_scales=(1.,)"])
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {k: pool.submit(run_case, *v) for k, v in jobs.items()}
    return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case_id,pattern", [(c[0], c[4]) for c in USER_ERRORS], ids=[c[0] for c in USER_ERRORS])
def test_user_error_through_main(main_results, case_id, pattern):
  workdir, before, after, result = main_results[case_id]
  detail = f"exit {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}"
  assert result.returncode == 2, detail
  assert "Traceback" not in result.stderr, detail
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, detail
  assert re.search(pattern, errors[0]), detail
  # The error is the last thing printed: one paragraph, nothing after it.
  assert result.stderr.rstrip().splitlines()[-1] == errors[0], detail
  assert_nothing_removed_or_changed(before, after)
  if os.path.isdir(workdir):
    assert not os.path.exists(os.path.join(workdir, "samples"))


def test_a_prompt_longer_than_the_context_is_truncated_with_a_warning(main_results):
  workdir, before, after, result = main_results["long_prompt"]
  assert result.returncode == 0, result.stderr[-4000:]
  assert "truncated" in result.stderr and "text context of 8 tokens" in result.stderr, result.stderr[-4000:]
  assert "error:" not in result.stderr
  with np.load(os.path.join(workdir, "samples", "samples.npz")) as f:
    assert list(f["prompts"]) == [LONG_PROMPT]
    assert f["images"].shape == (1, 16, 16, 1)
  assert_nothing_removed_or_changed(before, after)
