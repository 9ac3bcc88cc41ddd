"""The one command line: flags, the mode table and the error path every mode shares.

  python main.py --config=configs/mnist.py --workdir=DIR [--mode=train|sample|edit|eval|eval_edit|...]

`python -m glide_jax.convert` and `python -m glide_jax.benchmark` are this command with the mode fixed. A user
error (bad flag, config value, path, checkpoint, prompt...) prints one `error:` paragraph and exits 2.
Imports no JAX at import time: `launch` sets up the CPU devices first.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import traceback
from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

from glide_jax.errors import report_errors
from glide_jax.runtime import (
  TRAINING_MODES,
  quiet_library_noise,
  stop_on_sigterm_before_work,
  tune_malloc,
  use_all_cpu_cores,
)

# Mode → "module:function(config, workdir, **the mode's own flags)", imported only when chosen.
MODES = {
    "train": "glide_jax.modes.train:run",
    "sample": "glide_jax.modes.sample:run",
    "edit": "glide_jax.modes.edit:run",
    "eval": "glide_jax.modes.eval:run",
    "eval_edit": "glide_jax.modes.eval_edit:run",
    "train_classifier": "glide_jax.modes.train_classifier:run",
    "train_clip": "glide_jax.modes.train_clip:run",
    "convert": "glide_jax.modes.convert:run",
    "benchmark": "glide_jax.modes.benchmark:run",
}
NO_CONFIG_MODES = ("convert",)  # The released model names its config.
NO_WORKDIR_MODES = ("benchmark",)  # Writes only what --json names.

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
MODE = flags.DEFINE_enum("mode", "train", list(MODES),
                         "What to do: train, sample (guidance sweep), edit (regenerate part of images to match "
                         "prompts), eval (sample quality per guidance scale; for an inpainting run, edit quality), "
                         "eval_edit (edit quality), train_classifier (train and cache the classifier eval uses), "
                         "train_clip (a noised CLIP for CLIP guidance), "
                         "convert (a released GLIDE checkpoint into --workdir), benchmark (step time and memory).")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override fields as --config.a.b=value.",
                                lock_config=True)


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None


# A manual multi-host launch: these flags, or the environment variables named in their help.
COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                  "host:port of process 0 for a manual multi-host launch "
                                  "(default: $JAX_COORDINATOR_ADDRESS).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES"),
                                     "Number of processes in a manual multi-host launch (default: $JAX_NUM_PROCESSES).")
PROCESS_ID = flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID"),
                                  "This process's index in a manual multi-host launch (default: $JAX_PROCESS_ID).")

# Flags of one mode only, passed to its function by name.
MODE_FLAGS = {
    "convert": (
        flags.DEFINE_enum("model", None, ["base", "upsample", "base-inpaint", "upsample-inpaint", "clip"],
                          "--mode=convert: which released GLIDE model the checkpoint is (clip: the noised CLIP)."),
        flags.DEFINE_string("checkpoint", None, "--mode=convert: the downloaded .pt file (or .safetensors, or an "
                            ".npz of its arrays); for --model=clip the image and text encoders' files, "
                            "comma-separated."),
    ),
    "benchmark": (
        flags.DEFINE_multi_integer("batch", None, "--mode=benchmark: global batch size(s) to time (default: the "
                                   "config's)."),
        flags.DEFINE_multi_integer("sample_batch", [], "--mode=benchmark: numbers of samples to time guided "
                                   "sampling for."),
        flags.DEFINE_integer("sample_steps", 10, "--mode=benchmark: respaced sampling steps per timed sampling call."),
        flags.DEFINE_bool("skip_train", False, "--mode=benchmark: time sampling only."),
        flags.DEFINE_integer("steps", 5, "--mode=benchmark: timed train steps after the warm-up step."),
        flags.DEFINE_string("json", "", "--mode=benchmark: where to write the JSON results (default: print only)."),
        flags.DEFINE_float("peak_tflops", None, "--mode=benchmark: the chip's peak dense TFLOP/s per device for the "
                           "MFU, where glide_jax/modes/benchmark.py does not know it."),
        flags.DEFINE_bool("synthetic", False, "--mode=benchmark: random images and digit prompts instead of the "
                          "dataset (the step's cost does not depend on the pixels)."),
    ),
}
REQUIRED_MODE_FLAGS = {"convert": ("model", "checkpoint")}


def _flag_problem(mode: str) -> Optional[str]:
  """A flag this mode needs but lacks, or takes but does not use; None when they fit."""
  given = {name for name in flags.FLAGS if flags.FLAGS[name].present}
  for other, holders in MODE_FLAGS.items():
    for holder in holders:
      if other != mode and holder.name in given:
        return f"--{holder.name} is a flag of --mode={other}, not of --mode={mode}"
  if mode in NO_CONFIG_MODES and "config" in given:
    return f"--mode={mode} takes the model's config from --model; leave out --config"
  needed = [n for n in ("config", "workdir") if mode not in (NO_CONFIG_MODES if n == "config" else NO_WORKDIR_MODES)]
  missing = [n for n in (*needed, *REQUIRED_MODE_FLAGS.get(mode, ())) if n not in given]
  if missing:
    return f"--mode={mode} needs {' and '.join('--' + n for n in missing)}"
  return None


def _run_mode() -> None:
  from glide_jax.runtime import enable_compilation_cache, initialize_distributed, tune_gc

  mode = MODE.value
  module_name, function_name = MODES[mode].split(":")
  options = {holder.name: holder.value for holder in MODE_FLAGS.get(mode, ())}
  config = None if mode in NO_CONFIG_MODES else flags.FLAGS.config
  initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  enable_compilation_cache()
  run = getattr(importlib.import_module(module_name), function_name)
  tune_gc()  # The mode's imports (JAX, Flax, Orbax, TFDS) are done: freeze them.
  try:
    run(config, WORKDIR.value, **options)
  except KeyboardInterrupt:
    if mode in TRAINING_MODES:  # Training's own guard saves and reports its stops; this is one before it started.
      raise
    print(_stopped_message("SIGINT", mode), file=sys.stderr, flush=True)
    sys.exit(130)


def _stopped_message(signal_name: str, mode: str) -> str:
  return (f"Stopped by {signal_name} before --mode={mode} finished; it writes its results when it finishes, so "
          f"nothing was written. Rerun the same command.")


def _stop_now(signum, frame):
  """SIGTERM outside training: nothing to save, so stop at once (a compiled sampling call can run for minutes
  before Python would see an exception), saying so, with the shell's exit code for the signal."""
  print("\n" + _stopped_message(signal.Signals(signum).name, MODE.value), file=sys.stderr, flush=True)  # Below a bar.
  sys.stdout.flush()
  os._exit(128 + signum)


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every save at INFO; -v 0 shows them.
  if MODE.value not in TRAINING_MODES:  # Training's own handler saves a checkpoint; the other modes unwind and say so.
    signal.signal(signal.SIGTERM, _stop_now)
  report_errors(_run_mode)


def _config_file_problem(e: Exception, argv: list[str]) -> Optional[str]:
  """What is wrong with the --config file itself (no get_config, or get_config raised), with file and line."""
  path = ([a.split("=", 1)[1] for a in argv if a.startswith("--config=")] or ["?"])[-1]  # absl: the last wins.
  text = str(e.__context__ or e)
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return (f"the --config file {path} defines no get_config(); it must define one that returns an "
            f"ml_collections.ConfigDict (see configs/mnist_cpu.py)")
  if "Error whilst parsing config file" in text:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    where = next((f" at {f} line {n}" for f, n in reversed(frames) if "ml_collections" not in f), "")
    return f"get_config() in the --config file {path} raised {lines[-1]}{where}"
  same_file = lambda name: name and os.path.abspath(name) == os.path.abspath(path)  # noqa: E731
  if isinstance(e, SyntaxError) and same_file(e.filename):
    return f"the --config file {path} is not valid Python: {e.msg} at line {e.lineno}"
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if same_file(f.filename)]
  if lines:  # Raised while the file was imported: a failing import, or an error at module level.
    return f"importing the --config file {path} raised {type(e).__name__}: {e} at line {lines[-1]}"
  if isinstance(e, AttributeError) and "'NoneType' object has no attribute" in str(e):
    return f"get_config() in the --config file {path} returned None; it must return an ml_collections.ConfigDict"
  return None


def _flag_error(e: Exception, argv: list[str]) -> str:
  """absl's or ml_collections' error for a bad flag or config override, as one sentence naming the fix."""
  problem = _config_file_problem(e, argv)
  if problem:
    return f"{problem}."
  message = " ".join(str(e).split())
  if len(message) > 1 and message[0] == message[-1] and message[0] in "\"'":
    message = message[1:-1]  # KeyError quotes its message.
  if isinstance(e, (KeyError, AttributeError)):
    message = f"unknown config field '{message.strip(chr(34) + chr(39))}'"
  elif isinstance(e, OSError) or isinstance(e.__cause__, OSError):
    message = f"cannot load the --config file ({' '.join(str(e.__cause__ or e).split())})"
  return (f"bad command-line flag or config override: {message}. The fields and their types are those of "
          f"glide_jax/config.py (configs/*.py change some values); e.g. --config.train.batch_size=64.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; a bad or missing flag or config override is reported in one paragraph (exit 2)."""
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS["config"].present:
      flags.FLAGS.config.keys()  # The config file is loaded (and overrides applied) lazily: surface errors here.
  except Exception as e:  # Unknown or ill-typed --config.* keys surface as several exception types.
    print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)
  problem = _flag_problem(MODE.value)
  if problem:
    print(f"error: {problem}. See --help.", file=sys.stderr)
    sys.exit(2)
  return rest


def launch(mode: Optional[str] = None) -> None:
  """The process's whole life: set-up before JAX starts, flags, then the mode (`mode` fixes --mode)."""
  stop_on_sigterm_before_work()
  quiet_library_noise()
  tune_malloc()
  use_all_cpu_cores()
  argv = list(sys.argv)
  if mode is not None:
    if any(a == "--mode" or a.startswith("--mode=") for a in argv[1:]):
      print(f"error: python -m glide_jax.{mode} is --mode={mode}; leave out --mode.", file=sys.stderr)
      sys.exit(2)
    argv.insert(1, f"--mode={mode}")
  sys.argv = argv
  for flag in flags.FLAGS.get_flags_for_module(__name__):  # --help lists them as the entry point's own.
    flags.FLAGS.register_key_flag_for_module(argv[0], flag)
  app.run(main, flags_parser=parse_flags)
