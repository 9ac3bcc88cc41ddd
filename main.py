"""glide-jax entry point: python main.py --config=configs/mnist.py --workdir=DIR [--mode=train|sample|eval|train_classifier]."""

from __future__ import annotations

import os
import sys


from glide_jax.host_devices import use_all_cpu_cores  # noqa: E402  (no JAX import)

use_all_cpu_cores()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "train_classifier"],
                         "What to do: train, sample (guidance sweep), eval (sample quality per guidance scale), "
                         "train_classifier (train and cache the classifier eval uses).")
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
  import jax

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every save at INFO; -v 0 shows them.

  from glide_jax.errors import UserError

  if NUM_PROCESSES.value and NUM_PROCESSES.value > 1:
    if not COORDINATOR.value or PROCESS_ID.value is None or not 0 <= PROCESS_ID.value < NUM_PROCESSES.value:
      print(f"error: a manual multi-host launch of {NUM_PROCESSES.value} processes needs --coordinator_address="
            f"HOST:PORT (process 0's host) and --process_id from 0 to {NUM_PROCESSES.value - 1} on every process "
            f"(or $JAX_COORDINATOR_ADDRESS and $JAX_PROCESS_ID).", file=sys.stderr)
      sys.exit(2)
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  elif NUM_PROCESSES.value is None and any(v in os.environ for v in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")):
    jax.distributed.initialize()  # Cluster auto-detection (TPU pod slices, SLURM).
  if jax.process_count() > 1:
    print(f"JAX process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"devices, {jax.device_count()} in all.", flush=True)
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())

  config = flags.FLAGS.config
  try:
    if MODE.value == "train":
      from glide_jax.train import train_and_evaluate
      train_and_evaluate(config, FLAGS.value)
    elif MODE.value == "sample":
      from glide_jax.sample_main import sample_and_save
      sample_and_save(config, FLAGS.value)
    elif MODE.value == "eval":
      from glide_jax.evaluation import evaluate
      evaluate(config, FLAGS.value)
    elif MODE.value == "train_classifier":
      from glide_jax.classifier import get_or_train_classifier
      from glide_jax.config import validate_config
      validate_config(config)
      get_or_train_classifier(config)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad flags or config overrides reported in one paragraph (exit code 2)."""
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()  # The config file is loaded (and overrides applied) lazily: surface errors here.
    return rest
  except Exception as e:  # Unknown or ill-typed --config.* keys surface as several exception types.
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
