"""Speed and memory of a config: python -m glide_jax.benchmark --config=configs/mnist_cpu.py [--batch=32].

Prints compile time, median train-step time, images/s, peak resident memory, XLA's FLOP count per step
and the achieved FLOP/s (and, once available, sampling step time); writes the figures as JSON.
"""

from __future__ import annotations

from glide_jax.runtime import use_all_cpu_cores

if __name__ == "__main__":
  use_all_cpu_cores()  # Like main.py, before JAX starts (GLIDE_HOST_DEVICES=0 keeps one CPU device).

import json
import resource
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from glide_jax import sharding as sharding_lib
from glide_jax.experiment import Experiment

config_flags.DEFINE_config_file("config", "configs/mnist_cpu.py", "Config file to benchmark.")
BATCH = flags.DEFINE_multi_integer("batch", None, "Global batch size(s) to time (default: the config's).")
SAMPLE_BATCH = flags.DEFINE_multi_integer("sample_batch", [], "Numbers of samples to time guided sampling for.")
SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 10, "Respaced sampling steps per timed sampling call.")
SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Time sampling only.")
STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps after the warm-up step.")
OUT = flags.DEFINE_string("json", "", "Where to write the JSON results (default: print only).")
SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Random images and digit prompts instead of the dataset "
                              "(for a machine without MNIST; the step's cost does not depend on the pixels).")


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def peak_device_gb() -> float | None:
  """Peak accelerator memory in use so far (None on CPU, whose memory is the process's RSS)."""
  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  return stats["peak_bytes_in_use"] / 2 ** 30 if stats and "peak_bytes_in_use" in stats else None


def synthetic_batches(exp: Experiment):
  """Batch `step` of uniform-noise images with random digit prompts, shaped like the real ones."""
  c = exp.config
  shape = (c.train.batch_size, c.data.image_size, c.data.image_size, c.data.channels)

  def batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([c.seed, step])
    labels = rng.integers(0, 10, shape[0])
    tokens, mask = exp.tokenizer.tokenize_batch([str(k) for k in labels], c.model.text_ctx)
    return {"images": rng.uniform(-1, 1, shape).astype(np.float32), "tokens": tokens, "mask": mask}
  return batch


def time_train_step(config, batch_size: int, steps: int) -> dict:
  config.train.batch_size = batch_size
  exp = Experiment(config)
  step_fn = exp.train_step_fn()
  batches = synthetic_batches(exp) if SYNTHETIC.value else exp.batch_source()
  state = exp.init_fn()
  rng = exp.train_rng
  batch = sharding_lib.put_batch(batches(0), exp.mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  compile_peak_gb = peak_rss_gb()
  memory = compiled.memory_analysis()
  temp_gb = memory.temp_size_in_bytes / 2 ** 30 if memory is not None else None
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  state, metrics = compiled(state, batch, rng)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for step in range(1, steps + 1):
    batch = sharding_lib.put_batch(batches(step), exp.mesh)
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  return {"batch": batch_size, "microbatch_size": config.train.microbatch_size, "devices": exp.mesh.size,
          "dtype": config.model.dtype, "compile_s": compile_s,
          "train_step_s": step_s, "images_per_s": batch_size / step_s, "flops_per_step": flops,
          "achieved_gflops": flops / step_s / 1e9, "peak_rss_gb": peak_rss_gb(),
          "peak_rss_after_compile_gb": compile_peak_gb, "xla_temp_gb_per_device": temp_gb,
          "peak_device_gb": peak_device_gb()}


def time_sampling(config, num_samples: int, steps: int, repeats: int = 2) -> dict:
  """Seconds per guided sampling step (one batched forward pass on 2·num_samples rows)."""
  exp = Experiment(config)
  params = exp.init_fn().ema_params
  sampler = exp.make_sampler("ddpm", str(steps))
  tokens, mask = exp.tokenizer.tokenize_batch(["7"] * num_samples, config.model.text_ctx)
  scales = np.full((num_samples,), 4.0, np.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(sampler(params, tokens, mask, scales, jax.random.key(0)))
  first_s = time.perf_counter() - t0
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(sampler(params, tokens, mask, scales, jax.random.key(i + 1)))
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times)) / steps
  return {"samples": num_samples, "devices": exp.mesh.size, "dtype": config.model.dtype,
          "compile_and_first_call_s": first_s, "sample_step_s": step_s,
          "samples_per_s_1000_steps": num_samples / (step_s * 1000), "peak_rss_gb": peak_rss_gb(),
          "peak_device_gb": peak_device_gb()}


def device_memory(result: dict) -> str:
  gb = result["peak_device_gb"]
  return "" if gb is None else f" | peak device memory {gb:.2f} GB"


def main(argv):
  del argv
  config = flags.FLAGS.config
  results, sampling = [], []
  for batch in ([] if SKIP_TRAIN.value else BATCH.value or [config.train.batch_size]):
    results.append(time_train_step(config.copy_and_resolve_references(), batch, STEPS.value))
    r = results[-1]
    print(f"batch {r['batch']:4d} (micro {r['microbatch_size'] or r['batch']}) | devices {r['devices']} | "
          f"{r['dtype']:8s} | compile {r['compile_s']:6.1f} s | "
          f"step {r['train_step_s']:8.4f} s | {r['images_per_s']:7.1f} img/s | "
          f"{r['flops_per_step'] / 1e9:8.1f} GFLOP/step | {r['achieved_gflops']:6.1f} GFLOP/s | "
          f"peak RSS {r['peak_rss_gb']:.2f} GB (compile {r['peak_rss_after_compile_gb']:.2f}) | "
          f"XLA temp/device {r['xla_temp_gb_per_device'] or 0:.2f} GB{device_memory(r)}", flush=True)
  for n in SAMPLE_BATCH.value:
    sampling.append(time_sampling(config.copy_and_resolve_references(), n, SAMPLE_STEPS.value))
    r = sampling[-1]
    print(f"sample {r['samples']:3d} | devices {r['devices']} | {r['dtype']:8s} | "
          f"first call {r['compile_and_first_call_s']:6.1f} s | step {r['sample_step_s']:8.4f} s | "
          f"{r['samples_per_s_1000_steps']:7.3f} samples/s at 1000 steps | peak RSS {r['peak_rss_gb']:.2f} GB"
          f"{device_memory(r)}",
          flush=True)
  if OUT.value:
    with open(OUT.value, "w") as f:
      json.dump({"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                 "train": results, "sampling": sampling}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
