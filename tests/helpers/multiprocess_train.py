"""One process of a multi-process CPU run of the tiny config (see test_multihost.py).

Usage: multiprocess_train.py WORKDIR NUM_STEPS NUM_PROCESSES PROCESS_ID PORT DEVICES_PER_PROCESS [MESH]
With NUM_PROCESSES=1 it runs alone (no jax.distributed). MESH is "DATAxFSDP" (default: all devices on data).
Prints one JSON line: the process's index, count, global device count and final step.
"""

import json
import os
import sys


def make_config(num_steps: int, mesh_shape=(-1, 1)):
  """The tiny config, logging and checkpointing every step or two (shared with the test that resumes it)."""
  from configs import tiny
  config = tiny.get_config()
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.keep_checkpoints = 10
  config.train.sample_every = 2  # The sampler runs across processes too (gathered on every host).
  config.mesh.shape = tuple(mesh_shape)
  return config


def main(workdir, num_steps, num_processes, process_id, port, local_devices, mesh="-1x1"):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  import jax  # After XLA_FLAGS.
  if int(num_processes) > 1:
    # CPU devices of different processes talk through gloo (JAX's CPU cross-process collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id),
                               initialization_timeout=120)
  from glide_jax.train import train_and_evaluate
  config = make_config(int(num_steps), [int(s) for s in mesh.split("x")])
  state = train_and_evaluate(config, workdir)
  print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                    "devices": jax.device_count(), "step": int(jax.device_get(state.step))}), flush=True)
  if jax.process_count() > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
