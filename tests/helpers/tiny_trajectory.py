"""Trains the tiny config for N steps and samples once; prints the metrics (as float hex) and the samples'
digest as JSON. Run by test_experiment in a process compiled as users compile (see full_optimizations_env).

Usage: tiny_trajectory.py NUM_STEPS
"""

import hashlib
import json
import sys

import jax
import numpy as np

from configs import tiny
from glide_jax import sharding as sharding_lib
from glide_jax.experiment import Experiment
from glide_jax.sampling.guided import SamplerSpec


def main():
  config = tiny.get_config()
  exp = Experiment(config)
  state, step_fn, batches = exp.init_fn(), exp.train_step_fn(), exp.batch_source()
  metrics_per_step = []
  for step in range(int(sys.argv[1])):
    state, metrics = step_fn(state, sharding_lib.put_batch(batches(step), exp.mesh), exp.train_rng)
    metrics_per_step.append({k: float(v).hex() for k, v in jax.device_get(metrics).items()})
  sampler = exp.sampler(jax.device_get(state.ema_params), SamplerSpec(respacing="5"))
  tokens, mask = exp.tokenizer.tokenize_batch(["7", "three"], config.model.text_ctx)
  x = np.asarray(jax.device_get(sampler(tokens, mask,
                                        np.array([0.0, 3.0], np.float32), jax.random.key(7))), np.float32)
  print(json.dumps({"metrics": metrics_per_step, "sample_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
                    "sample_sum": float(np.sum(x, dtype=np.float64)).hex()}))


if __name__ == "__main__":
  main()
