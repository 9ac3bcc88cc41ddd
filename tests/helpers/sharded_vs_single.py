"""Runs a few tiny-config steps on several (data, fsdp) meshes and on 1 device; prints a JSON report.

Usage: sharded_vs_single.py MICRO_DATAxFSDP [DATAxFSDP ...]   (needs that many host devices: see test_sharding)

The first mesh trains with gradient accumulation, the others with the plain step; each against the same on one
device.
"""

import json
import sys

import jax
import numpy as np

from configs import tiny
from glide_jax import sharding
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment


def run(mesh, config, steps=3):
  exp = Experiment(config, mesh=mesh)
  batches = exp.batch_source()
  state, step_fn = exp.init_fn(), exp.train_step_fn()
  rng = jax.random.key(1)
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, sharding.put_batch(batches(step), mesh), rng)
    losses.append(float(metrics["loss"]))
  return losses, state


def mesh_of(arg):
  """The mesh "DATAxFSDP" names, e.g. "2x4"."""
  return sharding.make_mesh(tuple(int(s) for s in arg.split("x")))


def layout(tree):
  """How a pytree of arrays is laid out: bytes in all and on one device, and each leaf's partition spec."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {
      "bytes": int(sum(x.nbytes for _, x in leaves)),
      "bytes_per_device": int(sum(x.addressable_shards[0].data.nbytes for _, x in leaves)),
      "specs": {jax.tree_util.keystr(p): str(tuple(x.sharding.spec)) for p, x in leaves},
  }


def compared(loss, state, reference_state):
  """A sharded run's losses, its largest parameter difference from the one-device run, and its layouts."""
  diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), jax.device_get(state.params),
                                 jax.device_get(reference_state.params))
  return {"loss": loss, "max_param_diff": max(jax.tree_util.tree_leaves(diffs)), "params": layout(state.params),
          "ema_params": layout(state.ema_params), "adam_mu": layout(state.opt_state[1][0].mu)}


def main():
  config = tiny.get_config()
  # 64 channels: most arrays are then large enough to shard, so most of the state's bytes are split over fsdp
  # (test_fsdp_shards_params_ema_and_adam_state), as in a real model; at tiny's 32, a third of them are replicated.
  config.model.model_channels = 64
  config.train.batch_size = 16
  devices = jax.devices()
  loss_single, state_single = run(sharding.make_mesh((1, 1), devices[:1]), config)
  micro_mesh, *plain_meshes = sys.argv[1:]
  meshes = {arg: compared(*run(mesh_of(arg), config), state_single) for arg in plain_meshes}
  # Gradient accumulation (2 microbatches of 8) on its mesh against the same on one device.
  micro = config.copy_and_resolve_references()
  micro.train.microbatch_size = 8
  loss_micro_single, state_micro_single = run(sharding.make_mesh((1, 1), devices[:1]), micro)
  microbatched = dict(compared(*run(mesh_of(micro_mesh), micro), state_micro_single), loss_single=loss_micro_single)
  try:
    sharding.check_batch_divisible(12, sharding.make_mesh((-1, 1)))
    error = ""
  except UserError as e:
    error = str(e)
  try:
    sharding.check_batch_divisible(16, sharding.make_mesh((-1, 1)), microbatches=4)
    microbatch_error = ""
  except UserError as e:
    microbatch_error = str(e)
  print(json.dumps({"devices": len(devices), "loss_single": loss_single, "meshes": meshes,
                    "indivisible_error": error, "indivisible_microbatch_error": microbatch_error,
                    "microbatched": microbatched}))


if __name__ == "__main__":
  main()
