"""Where a training step's time goes on this machine: a per-operation profile of the compiled step.

  PYTHONPATH=. python scripts/profile_step.py --config=configs/mnist_cpu.py --batch=32 --steps=3 \
      [--top=5] [model.model_channels=32 ...]

Compiles the config's training step as `--mode=benchmark` does (synthetic data, the same devices and flags),
runs it under `jax.profiler` for --steps steps, and prints the device time per step of each kind of
operation (convolutions and matrix products, reductions, elementwise fusions, copies and transposes,
collectives, ...) and of the --top single operations, from the Perfetto trace the profiler writes
(--out keeps it and the compiled step's HLO; open the trace at https://ui.perfetto.dev). Device time is the sum
of the operations' durations over all devices; XLA:CPU runs independent operations at once and a while loop's
time includes its body's operations, so the sum is not the step's wall time. A collective's time is mostly
one device waiting for the other.
"""

from __future__ import annotations

import argparse
import ast
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import sys
import tempfile

# One HLO instruction: "%name = type opcode(operands), attributes".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\((.*)$")


def _fused_computations(hlo_text: str) -> dict[str, set[str]]:
  """The opcodes inside each computation of the module, by computation name."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = computations.setdefault(header.group(1), set())
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      current.add(match.group(2))
  return computations


def operation_kinds(hlo_text: str) -> dict[str, str]:
  """Each instruction of the compiled module by name, with the kind of work it does."""
  computations = _fused_computations(hlo_text)
  kinds = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode, rest = match.groups()
    if opcode in ("fusion", "custom-call", "call"):
      called = re.search(r"(?:calls|to_apply)=%?([\w.\-]+)", rest)
      inside = computations.get(called.group(1), set()) if called else set()
      library = "YNNPACK " if "ynn" in rest.lower() else "oneDNN " if "onednn" in rest.lower() else ""
      if inside & {"convolution"}:
        kinds[name] = f"{library}convolution"
      elif inside & {"dot"}:
        kinds[name] = f"{library}matrix product"
      elif inside & {"reduce", "reduce-window"}:
        kinds[name] = "reduction fusion"
      elif inside & {"transpose"} and inside <= {"transpose", "parameter", "bitcast", "copy", "reshape"}:
        kinds[name] = "transpose"
      elif opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        kinds[name] = f"custom call {target.group(1) if target else ''}".strip()
      else:
        kinds[name] = f"{library}elementwise fusion"
    elif opcode in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"):
      kinds[name] = "collective"
    elif opcode in ("copy", "transpose"):
      kinds[name] = "copy / transpose"
    elif opcode in ("convolution", "dot"):
      kinds[name] = {"convolution": "convolution", "dot": "matrix product"}[opcode]
    elif opcode in ("while", "conditional"):
      kinds[name] = f"{opcode} loop"
    else:
      kinds[name] = opcode
  return kinds


def device_time(trace_events: list[dict], kinds: dict[str, str], steps: int):
  """Seconds per step by kind and by operation: the complete ('X') events named after the module's
  instructions. Returns (by kind, by operation) as lists of (name, seconds per step, calls per step)."""
  by_kind, by_op = collections.defaultdict(lambda: [0.0, 0]), collections.defaultdict(lambda: [0.0, 0])
  for event in trace_events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name not in kinds:
      continue
    seconds = float(event.get("dur", 0.0)) / 1e6
    for table, key in ((by_kind, kinds[name]), (by_op, name)):
      table[key][0] += seconds
      table[key][1] += 1

  def rows(table):
    return sorted(((k, s / steps, n / steps) for k, (s, n) in table.items()), key=lambda r: -r[1])
  return rows(by_kind), rows(by_op)


def load_config(path: str, overrides: list[str]):
  """The config file's get_config() with "a.b=value" overrides (values read as Python literals, else text)."""
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for override in overrides:
    key, _, text = override.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, name = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a configs/*.py file")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=3, help="profiled steps, after two unprofiled ones")
  parser.add_argument("--top", type=int, default=5, help="how many single operations to list")
  parser.add_argument("--out", default="", help="keep the trace in this directory (default: a temporary one)")
  parser.add_argument("overrides", nargs="*", help="config overrides as model.model_channels=32")
  args = parser.parse_args(argv)

  from glide_jax import runtime

  runtime.tune_malloc()
  runtime.use_all_cpu_cores()
  import jax

  from glide_jax import sharding as sharding_lib
  from glide_jax.experiment import Experiment
  from glide_jax.modes.benchmark import synthetic_batches

  config = load_config(args.config, args.overrides)
  config.train.batch_size = args.batch
  exp = Experiment(config)
  state, rng = exp.init_fn(), exp.train_rng
  batch = sharding_lib.put_batch(synthetic_batches(exp)(0), exp.mesh)
  compiled = exp.train_step_fn().lower(state, batch, rng).compile()
  hlo_text = compiled.as_text()
  kinds = operation_kinds(hlo_text)
  for _ in range(2):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  out = args.out or tempfile.mkdtemp(prefix="profile_step_")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "train_step.hlo.txt"), "w") as f:
    f.write(hlo_text)
  jax.profiler.start_trace(out, create_perfetto_trace=True)
  for _ in range(args.steps):
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
  jax.profiler.stop_trace()
  paths = sorted(glob.glob(os.path.join(out, "**", "perfetto_trace.json.gz"), recursive=True), key=os.path.getmtime)
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  by_kind, by_op = device_time(trace["traceEvents"] if isinstance(trace, dict) else trace, kinds, args.steps)
  total = sum(s for _, s, _ in by_kind)
  print(f"{runtime.describe_machine()}; {exp.mesh.size} devices; batch {args.batch}; "
        f"device time {total:.3f} s per step (summed over devices)")
  print(f"{'kind':32s} {'s/step':>8s} {'share':>6s} {'ops/step':>9s}")
  for kind, seconds, calls in by_kind:
    print(f"{kind:32s} {seconds:8.4f} {100 * seconds / total:5.1f}% {calls:9.0f}")
  print(f"\nthe {args.top} costliest operations:")
  for name, seconds, calls in by_op[:args.top]:
    print(f"{name:40s} {kinds[name]:28s} {seconds:8.4f} s/step {calls:5.0f} calls/step")
  print(f"\ntrace: {paths[-1]}; the compiled step: {os.path.join(out, 'train_step.hlo.txt')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
