"""main.py: user errors print one `error:` paragraph on stderr, exit with code 2, show no traceback and
change nothing in the workdir; a too-long prompt is truncated with a warning."""

import concurrent.futures
import glob
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from glide_jax.modes.train import run as train
from helpers.paths import REPO
from helpers.runs import (
  assert_nothing_removed_or_changed,
  checkpoint_steps,
  main_cmd,
  main_env,
  main_server,
  read,
  snapshot,
  tiny_config,
  wait_until,
)
from helpers.xla import xla_flags

# ---------------------------------------------------------------------------------------------------------
# 6. User errors through main.py: "error: ..." on stderr, exit code 2, no traceback, nothing deleted.

LONG_PROMPT = "a handwritten seven drawn slowly in thick dark ink"  # 50 characters; tiny text_ctx is 8.
assert len(LONG_PROMPT) > 8 * 6

# (id, mode, workdir kind, overrides, a regex the error message must match)
USER_ERRORS = [
    ("unknown_key", "train", "trained", ["--config.train.nope=1"], r"unknown config field.*nope"),
    ("ill_typed", "train", "trained", ["--config.train.batch_size=abc"],
     r"--config\.train\.batch_size=abc: invalid literal for int"),
    # Two levels downsample once, so 17 (not 18, which is even) is indivisible.
    ("image_size_indivisible", "train", "trained",
     ["--config.data.image_size=17", "--config.model.channel_mult=(1, 2)"],
     r"data\.image_size = 17 is invalid.*divisible by 2"),
    ("attention_never_reached", "train", "trained", ["--config.model.attention_resolutions=(5,)"],
     r"attention_resolutions.*never works at 5x5"),
    ("batch_not_divisible", "train", "trained", ["--config.train.batch_size=15", "--config.mesh.shape=(2,1)"],
     r"batch_size = 15 is not divisible by the 2 devices"),
    ("workdir_is_a_file", "train", "file", [], r"is a file"),
    ("missing_dataset", "train", "trained", ["--config.data.data_dir=/nonexistent", "--config.data.download=False"],
     r"dataset 'mnist' was not found under '/nonexistent', and config\.data\.download is off"),
    ("download_host_unreachable", "train", "trained",
     ["--config.data.data_dir=/nonexistent", "--config.data.download_url=http://127.0.0.1:1/"],
     r"'mnist' is not prepared under '/nonexistent', and downloading it failed: .* cannot be reached"),
    ("download_url_not_http", "train", "absent", ["--config.data.download_url=ftp://mirror/mnist"],
     r"config\.data\.download_url = 'ftp://mirror/mnist' is invalid: give an http:// or https:// URL"),
    ("empty_prompts", "sample", "trained", ["--config.sample.prompts= , "], r"holds no prompt"),
    ("non_utf8_prompt_file", "sample", "trained", ["--config.sample.prompt_file={latin1_file}"], r"not UTF-8"),
    ("negative_guidance", "sample", "trained", ["--config.sample.guidance_scales=(-1.,)"],
     r"guidance_scales = .* is invalid: it has \[-1\.0\]"),
    ("nan_guidance", "sample", "trained", ["--config.sample.guidance_scales=nan"],
     r"guidance_scales = .* is invalid: it has \[nan\]"),
    ("guidance_not_a_number", "sample", "trained", ["--config.sample.guidance_scales=(one,)"],
     r"guidance_scales = .*is invalid: give numbers"),
    ("zero_sampling_steps", "sample", "trained", ["--config.sample.respacing=0"], r"respacing '0'.*at least 1"),
    ("unknown_sampler", "sample", "trained", ["--config.sample.sampler=euler"],
     r"config\.sample\.sampler = 'euler' is invalid: choose one of \('ddpm', 'ddim', 'dpm_solver_pp_2m'\)"),
    ("unknown_respacing", "sample", "trained", ["--config.sample.respacing=fastest"], r"Unknown respacing 'fastest'"),
    ("no_checkpoint", "sample", "empty", [], r"No checkpoint in"),
    ("sample_workdir_is_a_file", "sample", "file", [], r"is a file, not a directory"),
    ("eval_without_workdir", "eval", "absent", [], r"does not exist"),
    # Values that used to pass validation and fail later: refused before any work, in every mode, and a
    # training run that is refused leaves no workdir behind.
    ("sample_setting_in_train_mode", "train", "absent", ["--config.sample.sampler=euler"],
     r"config\.sample\.sampler = 'euler' is invalid"),
    ("sample_respacing_in_train_mode", "train", "absent", ["--config.sample.respacing=2000"],
     r"config\.sample\.respacing = '2000' is invalid.*cannot hold 2000"),
    ("eval_setting_in_train_mode", "train", "absent", ["--config.eval.samples_per_digit=1"],
     r"config\.eval\.samples_per_digit = 1 is invalid"),
    ("batch_not_divisible_fresh", "train", "absent", ["--config.train.batch_size=15", "--config.mesh.shape=(2,1)"],
     r"batch_size = 15 is not divisible by the 2 devices"),
    ("missing_dataset_fresh", "train", "absent",
     ["--config.data.data_dir=/nonexistent", "--config.data.download=False"],
     r"dataset 'mnist' was not found"),
    ("classifier_dir_is_a_file", "train_classifier", "file", ["--config.eval.classifier_dir={a_file}"],
     r"config\.eval\.classifier_dir = .* it is a file"),
    ("truncated_dataset_file", "train", "absent", ["--config.data.data_dir={truncated_tfds}"],
     r"The prepared TFDS dataset 'mnist' under .* cannot be read: its files are damaged \(RuntimeError: Corrupted"),
    ("garbled_dataset_info", "sample", "trained", ["--config.data.data_dir={garbled_tfds}"],
     r"The prepared TFDS dataset 'mnist' under .* cannot be read: its files are damaged \(ParseError"),
    ("edit_mask_png_of_another_size", "edit", "trained", ["--config.edit.mask={mask_10px}"],
     r"The mask .*mask_10px\.png' is 10x10, but it must be 16x16 \(the model's image size"),
    ("edit_unreadable_png", "edit", "trained", ["--config.edit.images={not_a_png}"],
     r"The image .*not_a_png\.png' cannot be read as an image"),
    ("edit_box_outside_the_image", "edit", "trained", ["--config.edit.mask=box:0,0,20,8"],
     r"Mask 'box:0,0,20,8': the box must lie inside the 16x16 image"),
    ("edit_image_with_other_channels", "edit", "trained", ["--config.edit.images={rgb_png}"],
     r"The image .*rgb\.png' has 3 channel\(s\) \(RGB\) but the model takes 1 \(L\)"),
    ("edit_test_index_outside_the_split", "edit", "trained", ["--config.edit.images=test:3,999"],
     r"'test\[:256\]' has 256 examples \(0 to 255\); \[999\] are outside it"),
    ("flag_of_another_mode", "train", "trained", ["--batch=8"], r"--batch is a flag of --mode=benchmark, not of "
     r"--mode=train\. See --help\."),
    ("convert_takes_no_config", "convert", "absent", ["--model=base", "--checkpoint=base.pt"],
     r"--mode=convert takes the model's config from --model; leave out --config"),
    ("config_without_get_config", "train", "absent", ["--config={no_get_config}"],
     r"the --config file .*no_get_config\.py defines no get_config\(\); it must define one"),
    ("config_get_config_raises", "train", "absent", ["--config={get_config_raises}"],
     r"get_config\(\) in the --config file .*raises\.py raised ValueError: no such preset at .*raises\.py line 3"),
    ("config_get_config_returns_none", "train", "absent", ["--config={returns_none}"],
     r"^error: get_config\(\) in the --config file .*none\.py returned None; it must return an "
     r"ml_collections\.ConfigDict\.$"),
    ("config_import_fails", "train", "absent", ["--config={import_fails}"],
     r"importing the --config file .*imports\.py raised ModuleNotFoundError: No module named 'nosuchmodule' at "
     r"line 2"),
    ("config_raises_at_module_level", "train", "absent", ["--config={module_raises}"],
     r"importing the --config file .*module_level\.py raised ZeroDivisionError: division by zero at line 1"),
    ("config_syntax_error", "train", "absent", ["--config={syntax_error}"],
     r"the --config file .*syntax\.py is not valid Python: .* at line 1"),
]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny checkpoint at step 2 (trained in this process; main.py restores it onto 2 devices)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train(tiny_config(num_steps=2), workdir)
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
  elif kind == "absent":
    workdir = os.path.join(base, "absent")
  else:
    workdir = os.path.join(base, "empty")
    os.makedirs(workdir)
  return workdir


@pytest.fixture(scope="module")
def main_results(tmp_path_factory, trained_workdir):
  """Runs every USER_ERRORS case and the long-prompt sampling through main.py (forked children of the main.py
  server: each case is its own process, and its own first flag parse), two at a time."""
  base = tmp_path_factory.mktemp("user_errors")
  a_file = os.path.join(base, "a_file.txt")
  with open(a_file, "w") as f:
    f.write("not a directory\n")
  no_get_config = os.path.join(base, "no_get_config.py")
  with open(no_get_config, "w") as f:
    f.write("CONFIG = {}\n")
  get_config_raises = os.path.join(base, "raises.py")
  with open(get_config_raises, "w") as f:
    f.write("def get_config():\n  preset = 'large'\n  raise ValueError('no such preset')\n")
  config_files = {"returns_none": ("none.py", "def get_config():\n  pass\n"),
                  "import_fails": ("imports.py", "import os\nimport nosuchmodule\n"),
                  "module_raises": ("module_level.py", "x = 1 / 0\n"),
                  "syntax_error": ("syntax.py", "def get_config(:\n")}
  for key, (name, text) in config_files.items():
    config_files[key] = os.path.join(base, name)
    with open(config_files[key], "w") as f:
      f.write(text)
  damaged = {}
  for kind in ("truncated", "garbled"):
    damaged[kind] = os.path.join(base, f"{kind}_tfds")
    shutil.copytree(os.path.join(os.environ["TFDS_DATA_DIR"], "mnist"), os.path.join(damaged[kind], "mnist"),
                    copy_function=shutil.copyfile)
    version_dir = glob.glob(os.path.join(damaged[kind], "mnist", "*"))[0]
    os.chmod(version_dir, 0o755)  # copytree copies the shared copy's read-only mode onto directories.
    if kind == "truncated":
      os.truncate(glob.glob(os.path.join(version_dir, "*-train.array_record*"))[0], 1_000_000)
    else:
      with open(os.path.join(version_dir, "dataset_info.json"), "w") as f:
        f.write("{garbage")
  images = {name: os.path.join(base, f"{name}.png") for name in ("mask_10px", "not_a_png", "rgb")}
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(images["mask_10px"])
  with open(images["not_a_png"], "w") as f:
    f.write("not an image\n")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images["rgb"])
  latin1_file = os.path.join(base, "prompts_latin1.txt")
  with open(latin1_file, "wb") as f:
    f.write("sept en fran\u00e7ais, \u00e9crit \u00e0 la main\n".encode("latin-1"))

  def run_case(case_id, mode, kind, overrides):
    case_dir = os.path.join(base, case_id)
    os.makedirs(case_dir)
    workdir = _prepare(kind, case_dir, trained_workdir)
    before = snapshot(workdir)
    files = dict(latin1_file=latin1_file, a_file=a_file, no_get_config=no_get_config,
                 get_config_raises=get_config_raises, truncated_tfds=damaged["truncated"],
                 garbled_tfds=damaged["garbled"], mask_10px=images["mask_10px"], not_a_png=images["not_a_png"],
                 rgb_png=images["rgb"], **config_files)
    args = [o.format(**files) for o in overrides]
    config_file = [a for a in args if a.startswith("--config=")]  # In place of tiny's, not after it.
    cmd = [config_file[0] if c.startswith("--config=") and config_file else c
           for c in main_cmd(workdir, *[a for a in args if a not in config_file], mode=mode)]
    result = main_server().run(cmd[2:], cwd=REPO, env=main_env(), timeout=300)
    return workdir, before, snapshot(workdir), result

  jobs = {case_id: (case_id, mode, kind, overrides) for case_id, mode, kind, overrides, _ in USER_ERRORS}
  jobs["long_prompt"] = ("long_prompt", "sample", "trained",
                         [f"--config.sample.prompts={LONG_PROMPT}", "--config.sample.guidance_scales=(1.,)"])
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
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
  if os.path.basename(workdir) == "absent":
    assert not os.path.exists(workdir), "a refused run created its workdir"
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


# Starts main.py with SIGINT at its default, as from a terminal: pytest-xdist's workers ignore SIGINT, and a
# child would inherit that (Python then installs no KeyboardInterrupt handler).
_SIGINT_AS_IN_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _catches_sigterm(pid):
  """Whether the process has its own SIGTERM handler yet (Linux: the SigCgt mask of /proc/PID/status)."""
  with open(f"/proc/{pid}/status") as f:
    mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
  return bool(mask >> (signal.SIGTERM - 1) & 1)


def test_a_stopped_sampling_run_exits_with_the_signals_code_and_says_nothing_was_written(trained_workdir, tmp_path):
  """SIGTERM at start-up and while sampling, SIGINT while sampling: 143 or 130, one line, no samples/ (and not
  the trainer's "nothing new to save", exit 0)."""
  def start(name):
    workdir = str(tmp_path / name)
    shutil.copytree(trained_workdir, workdir)
    err = open(tmp_path / f"{name}.err", "w+")
    cmd = main_cmd(workdir, "--config.sample.num_per_prompt=64", "--config.sample.respacing=100",
                   "--config.sample.batch_size=2", mode="sample")  # Short batches: a signal lands between them.
    cmd = [sys.executable, "-c", _SIGINT_AS_IN_A_TERMINAL, *cmd[1:]]
    return workdir, err, subprocess.Popen(cmd, cwd=REPO, env=main_env(), stdout=subprocess.DEVNULL, stderr=err)

  runs = {name: start(name) for name in ("early", "term", "int")}
  try:
    early = runs["early"][2]
    assert wait_until(lambda: early.poll() is not None or _catches_sigterm(early.pid), timeout=120)
    early.send_signal(signal.SIGTERM)  # main.py's first line has taken SIGTERM over; the mode has not started.
    for name, sig in (("term", signal.SIGTERM), ("int", signal.SIGINT)):
      workdir, err, proc = runs[name]
      # After the first batch: the sampler is compiled (Ctrl-C reaches Python only between compiled calls).
      first_batch = re.compile(r"sample: .*\| [1-9]\d*/1280")
      assert wait_until(lambda: first_batch.search(read(err.name)) or proc.poll() is not None, timeout=300), (
          read(err.name))
      proc.send_signal(sig)
    for name, code in (("early", 143), ("term", 143), ("int", 130)):
      workdir, err, proc = runs[name]
      assert proc.wait(timeout=120) == code, read(err.name)[-3000:]
      last = read(err.name).strip().splitlines()[-1]
      assert re.match(r"Stopped by SIG(TERM|INT) before --mode=sample (started|finished)(;|, so) .*nothing was "
                      r"written\. Rerun the same command\.$", last), last
      assert "Traceback" not in read(err.name)
      assert not os.path.exists(os.path.join(workdir, "samples"))
  finally:
    for _, err, proc in runs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      err.close()


def test_main_runs_from_another_directory(trained_workdir, tmp_path):
  """The installed package and absolute paths are all main.py needs: no PYTHONPATH, another working directory."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = main_env()
  env.pop("PYTHONPATH", None)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
       f"--workdir={workdir}", "--mode=sample", "--config.sample.guidance_scales=(2.,)",
       "--config.sample.prompts=7"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "samples", "samples.npz"))
  assert os.listdir(elsewhere) == []


def test_the_package_is_importable_from_anywhere_once_installed(tmp_path):
  try:
    importlib.metadata.version("glide-jax")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("glide-jax is not pip-installed in this environment (.ci/run installs it with pip install -e .)")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", "import glide_jax.experiment, glide_jax; print(glide_jax.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == os.path.join(REPO, "glide_jax", "__init__.py")


# configs/mnist_cpu.py's batch of 32 in microbatches of 16, learning-rate schedule, min-SNR weighting and EMA
# as committed; only the model and images are the tiny config's, so each device count compiles in seconds.
MNIST_CPU_AT_TINY_SIZE = ("--config=configs/mnist_cpu.py", "--config.data.train_split=train[:512]",
                          "--config.data.image_size=16", "--config.model.channel_mult=(1,)",
                          "--config.model.attention_resolutions=(16,)", "--config.model.num_res_blocks=1",
                          "--config.model.num_head_channels=16", "--config.model.text_ctx=8",
                          "--config.model.xf_layers=1", "--config.train.num_steps=2",
                          "--config.train.checkpoint_every=2", "--config.train.sample_every=0")


def test_a_core_count_the_batch_does_not_split_over_trains_on_fewer_devices_and_says_so(tmp_path):
  """One CPU device per core, as on a laptop of 3 cores: mnist_cpu's microbatch of 16 splits over 2 of them, the
  run says so in its first line and trains there. (The device count for 1, 6 and 12 cores, and the line, are
  checked in-process by tests/test_run.py; training on meshes of 1, 4 and 8 devices by test_sharding.py and
  test_multihost.py: each device count is a program of its own to compile.)"""
  env = dict(main_env(), XLA_FLAGS=xla_flags(3))
  result = main_server().run([f"--workdir={tmp_path / 'run'}", *MNIST_CPU_AT_TINY_SIZE], env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  first = result.stdout.splitlines()[0] if result.stdout else ""
  assert first == ("Using 2 of the 3 devices: config.train.microbatch_size = 16 examples split evenly over 2; a "
                   "multiple of 3 would use them all."), result.stdout
  assert checkpoint_steps(tmp_path / "run") == [2]


def test_a_fresh_training_run_prints_nothing_but_progress(tmp_path):
  """No library chatter a user cannot act on (TFDS's OpenCV advice, Orbax notices, JAX platform probing):
  stderr holds the progress bar alone, and stdout nothing, on a fresh tiny run; a sampling run after it
  shows its own progress bar and nothing else on stderr."""
  env = {k: v for k, v in main_env().items() if k != "JAX_PLATFORMS"}  # As a user runs it.
  workdir = tmp_path / "run"
  train_run = subprocess.run(main_cmd(workdir, "--config.train.num_steps=2"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
  assert train_run.returncode == 0, train_run.stderr[-3000:]
  chatter = [line for line in re.split(r"[\r\n]+", train_run.stderr) if line.strip() and not line.startswith("train:")]
  assert chatter == [] and train_run.stdout == "", (chatter, train_run.stdout)
  sample_run = subprocess.run(main_cmd(workdir, "--config.sample.respacing=2", "--config.sample.prompts=1",
                                       "--config.sample.guidance_scales=1.0", mode="sample"),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert sample_run.returncode == 0, sample_run.stderr[-3000:]
  lines = re.split(r"[\r\n]+", sample_run.stderr)
  assert [line for line in lines if line.strip() and not line.startswith("sample:")] == [], lines
  assert re.search(r"sample: 100%\|.*\| 1/1 ", sample_run.stderr), sample_run.stderr  # The bar's estimate, done.
  assert sample_run.stdout.startswith("Wrote ") and len(sample_run.stdout.strip().splitlines()) == 1
