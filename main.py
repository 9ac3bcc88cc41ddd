"""glide-jax entry point: python main.py --config=configs/mnist.py --workdir=DIR [--mode=train|sample|eval|...].

Parses the flags, starts the (multi-host) runtime and hands the config and workdir to the mode's function.
A user error (bad config value, path, checkpoint, prompt...) prints one `error:` paragraph and exits 2.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys

from glide_jax.runtime import quiet_library_noise, use_all_cpu_cores  # (No JAX: devices are set up first.)


def _stopped_before_work(signum, frame):
  """SIGTERM while starting up (imports, flags): nothing has been written yet, so stop with a message.

  os._exit, not SystemExit: the signal can arrive while Python runs a garbage-collection callback or a
  __del__, where a raised exception is printed as "Exception ignored" and the run goes on.
  """
  print(f"Stopped by {signal.Signals(signum).name} before the first step; nothing new to save. Rerun the same "
        f"command to start or resume.", flush=True)
  sys.stderr.flush()
  os._exit(0)


signal.signal(signal.SIGTERM, _stopped_before_work)  # Training's own handler takes over once it starts.
quiet_library_noise()
use_all_cpu_cores()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Mode → "module:function(config, workdir)", imported only when chosen.
MODES = {
    "train": "glide_jax.train.loop:train",
    "sample": "glide_jax.sampling.sweep:sample_and_save",
    "edit": "glide_jax.editing.edit:edit_and_save",
    "eval": "glide_jax.evaluation.evaluate:evaluate",
    "eval_edit": "glide_jax.evaluation.evaluate_edit:evaluate_edits",
    "train_classifier": "glide_jax.evaluation.classifier_cache:train_classifier_mode",
}

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
MODE = flags.DEFINE_enum("mode", "train", list(MODES),
                         "What to do: train, sample (guidance sweep), edit (regenerate part of images to match "
                         "prompts), eval (sample quality per guidance scale; for an inpainting run, edit quality), "
                         "eval_edit (edit quality), train_classifier (train and cache the classifier eval uses).")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override fields as --config.a.b=value.",
                                lock_config=True)


def _env_int(name: str):
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every save at INFO; -v 0 shows them.

  from glide_jax.errors import UserError, is_disk_full
  from glide_jax.runtime import enable_compilation_cache, initialize_distributed

  module_name, function_name = MODES[MODE.value].split(":")
  if MODE.value != "train":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  try:
    initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    enable_compilation_cache()
    getattr(importlib.import_module(module_name), function_name)(flags.FLAGS.config, WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    if not is_disk_full(e):
      raise
    print(f"error: the disk is full ({type(e).__name__}: {' '.join(str(e).split())[:200]}). Free some space and "
          f"rerun the same command; checkpoints already written are kept.", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)


def _config_file_problem(e: Exception, argv: list[str]) -> str | None:
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
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags or config overrides reported in one paragraph (exit code 2)."""
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()  # The config file is loaded (and overrides applied) lazily: surface errors here.
    return rest
  except Exception as e:  # Unknown or ill-typed --config.* keys surface as several exception types.
    problem = _config_file_problem(e, argv)
    if problem:
      print(f"error: {problem}.", file=sys.stderr)
      sys.exit(2)
    message = " ".join(str(e).split())
    if len(message) > 1 and message[0] == message[-1] and message[0] in "\"'":
      message = message[1:-1]  # KeyError quotes its message.
    if isinstance(e, (KeyError, AttributeError)):
      message = f"unknown config field '{message.strip(chr(34) + chr(39))}'"
    elif isinstance(e, OSError) or isinstance(e.__cause__, OSError):
      message = f"cannot load the --config file ({' '.join(str(e.__cause__ or e).split())})"
    print(f"error: bad command-line flag or config override: {message}. The fields and their types are those "
          f"of glide_jax/config.py (configs/*.py change some values); e.g. --config.train.batch_size=64.",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
