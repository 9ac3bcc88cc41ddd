"""--mode=benchmark: speed and memory of a config.

  python main.py --mode=benchmark --config=configs/mnist_cpu.py [--batch=32] [--sample_batch=16]


Prints, per batch size: compile time (a second run loads the program from the persistent compilation
cache), median train-step time, images/s, XLA's FLOP count per step, the achieved FLOP/s and the model
FLOPs utilisation (MFU) against the chip's peak, the number of operations in the compiled step (about one
kernel launch each on a GPU), and peak memory; with --sample_batch, the guided sampling step. Writes the
figures as JSON.
"""

from __future__ import annotations

import json as json_lib
import os
import re
import resource
import time
from typing import Optional, Sequence

import jax
import numpy as np

from glide_jax import runtime
from glide_jax import sharding as sharding_lib
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.sampling.guided import SamplerSpec

# Dense peak TFLOP/s per JAX device, by device kind (lower-case substrings, most specific first), from the
# vendors' datasheets: (bfloat16, float32 as XLA runs it by default: TF32 tensor cores on NVIDIA since
# Ampere, bfloat16 passes on TPUs). TPU v2 and v3 show each core as a device.
CHIP_PEAK_TFLOPS = (
    ("h100 pcie", (756.0, 378.0)),
    ("h100 nvl", (835.0, 417.5)),
    ("h100", (989.4, 494.7)),
    ("h200", (989.4, 494.7)),
    ("gh200", (989.4, 494.7)),
    ("b200", (2250.0, 1100.0)),
    ("a100", (312.0, 156.0)),
    ("l40s", (362.1, 183.0)),
    ("l4", (121.0, 60.0)),
    ("a10", (125.0, 62.5)),
    ("tpu v2", (22.5, 22.5)),
    ("tpu v3", (61.5, 61.5)),
    ("tpu v4", (275.0, 275.0)),
    ("tpu v5 lite", (197.0, 197.0)),
    ("tpu v5e", (197.0, 197.0)),
    ("tpu v5", (459.0, 459.0)),
    ("tpu v6 lite", (918.0, 918.0)),
    ("tpu v6e", (918.0, 918.0)),
)


def chip_peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  """The table's peak for this device kind and compute dtype, or None for an unknown chip (and CPUs)."""
  kind = device_kind.lower()
  for name, (bf16, fp32) in CHIP_PEAK_TFLOPS:
    if name in kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


# Entry-computation instructions that launch no work of their own.
_NO_WORK_OPS = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
                          "partition-id", "replica-id", "opt-barrier"})


def compiled_op_count(hlo_text: str) -> int:
  """Instructions in the optimised program's entry computation that do work: fusions, library calls
  (convolutions, matrix products, attention), copies, collectives. On a GPU each is about one kernel launch."""
  start = hlo_text.find("\nENTRY")
  if start < 0:
    return 0
  body = hlo_text[start:hlo_text.find("\n}", start)].splitlines()[1:]
  ops = [re.search(r"([a-z][a-z0-9-]*)\(", line.split(" = ", 1)[1]) for line in body if " = " in line]
  return sum(1 for op in ops if op and op.group(1) not in _NO_WORK_OPS)


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


def cost_flops(cost) -> float:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def model_flops_per_step(config, batch: dict) -> float:
  """XLA's FLOP count of one whole train step (all devices) as the program is written: the model FLOPs of MFU.

  Counted on the step before optimisation, where every convolution and matrix product is still an HLO op
  (a GPU's compiled program hides them in library calls whose FLOPs XLA does not count), with XLA's attention
  in place of cuDNN's fused call for the same reason. Platform-independent, so CPU and GPU rows compare.
  """
  reference = config.copy_and_resolve_references()
  reference.model.attention_impl = "xla"
  exp = Experiment(reference)
  return cost_flops(exp.train_step_fn().lower(exp.abstract_state, batch, exp.train_rng).cost_analysis())


def time_train_step(config, batch_size: int, steps: int, synthetic: bool = False,
                    peak_tflops: Optional[float] = None) -> dict:
  config.train.batch_size = batch_size
  exp = Experiment(config)
  step_fn = exp.train_step_fn()
  batches = synthetic_batches(exp) if synthetic else exp.batch_source()
  state = exp.init_fn()
  rng = exp.train_rng
  batch = sharding_lib.put_batch(batches(0), exp.mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  compile_peak_gb = peak_rss_gb()
  memory = compiled.memory_analysis()
  temp_gb = memory.temp_size_in_bytes / 2 ** 30 if memory is not None else None
  flops = model_flops_per_step(config, batch)
  ops = compiled_op_count(compiled.as_text())
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
  m = exp.model_config
  peak = peak_tflops or chip_peak_tflops(jax.devices()[0].device_kind, m.dtype)
  devices = exp.mesh.size
  return {"batch": batch_size, "microbatch_size": config.train.microbatch_size, "devices": exp.mesh.size,
          "dtype": m.dtype, "attention_impl": m.attention_impl, "norm_impl": m.norm_impl, "compile_s": compile_s,
          "train_step_s": step_s, "step_s_min": float(np.min(times)), "step_s_max": float(np.max(times)),
          "images_per_s": batch_size / step_s, "model_flops_per_step": flops, "compiled_ops": ops,
          "achieved_tflops_per_device": flops / step_s / devices / 1e12, "peak_tflops_per_device": peak,
          "mfu": flops / step_s / devices / (peak * 1e12) if peak else None, "peak_rss_gb": peak_rss_gb(),
          "peak_rss_after_compile_gb": compile_peak_gb, "xla_temp_gb_per_device": temp_gb,
          "peak_device_gb": peak_device_gb()}


def time_sampling(config, num_samples: int, steps: int, repeats: int = 2) -> dict:
  """Seconds per guided sampling step (one batched forward pass on 2·num_samples rows)."""
  exp = Experiment(config)
  sampler = exp.sampler(exp.init_fn().ema_params, SamplerSpec(respacing=str(steps)))
  tokens, mask = exp.tokenizer.tokenize_batch(["7"] * num_samples, config.model.text_ctx)
  scales = np.full((num_samples,), 4.0, np.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(sampler(tokens, mask, scales, jax.random.key(0)))
  first_s = time.perf_counter() - t0
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(sampler(tokens, mask, scales, jax.random.key(i + 1)))
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times)) / steps
  return {"samples": num_samples, "devices": exp.mesh.size, "dtype": exp.model_config.dtype,
          "compile_and_first_call_s": first_s, "sample_step_s": step_s,
          "samples_per_s_1000_steps": num_samples / (step_s * 1000), "peak_rss_gb": peak_rss_gb(),
          "peak_device_gb": peak_device_gb()}


def device_memory(result: dict) -> str:
  gb = result["peak_device_gb"]
  return "" if gb is None else f" | peak device memory {gb:.2f} GB"


def mfu_text(result: dict) -> str:
  return f"MFU {100 * result['mfu']:5.1f}%" if result["mfu"] is not None else "MFU -"


def check_options(batch: Optional[Sequence[int]], sample_batch: Sequence[int], sample_steps: int, steps: int,
                  json: str, peak_tflops: Optional[float]) -> None:
  """A UserError naming the flag, before any work, for a count below 1, a peak that is not positive or a --json
  path that cannot be written."""
  for name, values in (("batch", batch or ()), ("sample_batch", sample_batch), ("sample_steps", [sample_steps]),
                       ("steps", [steps])):
    for value in values:
      if value < 1:
        raise UserError(f"--{name}={value}: give a count of at least 1 (e.g. --{name}="
                        f"{dict(batch=32, sample_batch=16, sample_steps=10, steps=5)[name]}).")
  if peak_tflops is not None and not peak_tflops > 0:
    raise UserError(f"--peak_tflops={peak_tflops}: give the chip's peak in TFLOP/s, a positive number.")
  if json:
    directory = os.path.dirname(os.path.abspath(json))
    if os.path.isdir(json) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
      raise UserError(f"--json={json}: cannot write the results there ("
                      f"{'a directory' if os.path.isdir(json) else 'no writable directory ' + directory}); "
                      f"give a file path in a writable directory.")


def run(config, workdir: Optional[str] = None, batch: Optional[list[int]] = None,
        sample_batch: Sequence[int] = (), sample_steps: int = 10, skip_train: bool = False, steps: int = 5,
        json: str = "", peak_tflops: Optional[float] = None, synthetic: bool = False) -> dict:
  """Times the train step at each `batch` (default: the config's) and guided sampling at each `sample_batch`;
  prints a line each and returns (and, with `json`, writes) the figures. The workdir is not used."""
  del workdir
  check_options(batch, sample_batch, sample_steps, steps, json, peak_tflops)
  machine = runtime.describe_machine()
  print(f"on {machine}", flush=True)
  results, sampling = [], []
  for size in ([] if skip_train else batch or [config.train.batch_size]):
    results.append(time_train_step(config.copy_and_resolve_references(), size, steps, synthetic, peak_tflops))
    r = results[-1]
    print(f"batch {r['batch']:4d} (micro {r['microbatch_size'] or r['batch']}) | devices {r['devices']} | "
          f"{r['dtype']:8s} attention {r['attention_impl']} norm {r['norm_impl']} | compile {r['compile_s']:6.1f} s | "
          f"step {r['train_step_s']:8.4f} s | {r['images_per_s']:7.1f} img/s | "
          f"{r['model_flops_per_step'] / 1e9:8.1f} GFLOP/step | {1e3 * r['achieved_tflops_per_device']:8.1f} "
          f"GFLOP/s/device | {mfu_text(r)} | "
          f"{r['compiled_ops']} ops | "
          f"peak RSS {r['peak_rss_gb']:.2f} GB (compile {r['peak_rss_after_compile_gb']:.2f}) | "
          f"XLA temp/device {r['xla_temp_gb_per_device'] or 0:.2f} GB{device_memory(r)}", flush=True)
  for n in sample_batch:
    sampling.append(time_sampling(config.copy_and_resolve_references(), n, sample_steps))
    r = sampling[-1]
    print(f"sample {r['samples']:3d} | devices {r['devices']} | {r['dtype']:8s} | "
          f"first call {r['compile_and_first_call_s']:6.1f} s | step {r['sample_step_s']:8.4f} s | "
          f"{r['samples_per_s_1000_steps']:7.3f} samples/s at 1000 steps | peak RSS {r['peak_rss_gb']:.2f} GB"
          f"{device_memory(r)}",
          flush=True)
  figures = {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind, "machine": machine,
             "train": results, "sampling": sampling}
  if json:
    with open(json, "w") as f:
      json_lib.dump(figures, f, indent=1)
  return figures

