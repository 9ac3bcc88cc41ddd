"""Runs a few tiny-config steps on an 8-device mesh and on 1 device; prints a JSON report (see test_train)."""

import json

import jax
import numpy as np

from configs import tiny
from glide_jax import sharding
from glide_jax.errors import UserError
from glide_jax.train import Experiment


def run(mesh, config, steps=3):
  exp = Experiment.from_config(config, mesh=mesh)
  batches = exp.batch_source()
  state, step_fn = exp.init_fn(), exp.train_step_fn()
  rng = jax.random.key(1)
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, sharding.put_batch(batches(step), mesh), rng)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def main():
  config = tiny.get_config()
  config.train.batch_size = 16
  devices = jax.devices()
  loss_sharded, params_sharded = run(sharding.make_mesh((-1, 1)), config)
  loss_single, params_single = run(sharding.make_mesh((1, 1), devices[:1]), config)
  diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), params_sharded, params_single)
  try:
    sharding.check_batch_divisible(12, sharding.make_mesh((-1, 1)))
    error = ""
  except UserError as e:
    error = str(e)
  print(json.dumps({"devices": len(devices), "loss_sharded": loss_sharded, "loss_single": loss_single,
                    "max_param_diff": max(jax.tree_util.tree_leaves(diffs)), "indivisible_error": error}))


if __name__ == "__main__":
  main()
