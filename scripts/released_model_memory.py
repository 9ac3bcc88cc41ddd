"""Disk size of a converted released GLIDE model and the peak memory of sampling from it, measured.

A state dict with the released shapes (`../shared/reference/glide_goldens/released_checkpoint_shapes.json`)
and random weights is written as an .npz, converted with `python -m glide_jax.convert`, and sampled with
`--mode=sample` (one prompt, the config's 100 steps); with --cascade, the 256 px upsampler too, sampled as
the 64 -> 256 cascade. Each command runs in its own process, whose peak RSS the kernel reports (wait4).
Prints one line per figure, each also as a multiple of the parameters' float32 bytes.

  python scripts/released_model_memory.py --out=/tmp/released_memory [--cascade] [--repo=.]

--repo runs the commands in another checkout (an older commit, for a before/after comparison). The peak does
not depend on the number of sampling steps (one compiled lax.scan), so --respacing=2 measures it in minutes
rather than the 100 steps' quarter of an hour on a 2-core CPU (for the cascade, it is also written into the
base workdir's saved config, whose settings the base stage uses). GLIDE_HOST_DEVICES=0 samples on one CPU device
(by default one device per core, each holding its own replica of the parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(HERE, "..", "shared", "reference", "glide_goldens", "released_checkpoint_shapes.json")


def write_random_state_dict(model: str, path: str) -> int:
  """A random float32 state dict of the released `model`'s keys and shapes; returns its parameter count."""
  with open(SHAPES) as f:
    spec = json.load(f)[model]
  rng = np.random.default_rng(0)
  arrays = {name: (0.02 * rng.standard_normal(shape, dtype=np.float32)) for name, shape in spec["shapes"].items()}
  np.savez(path, **arrays)
  return sum(int(np.prod(shape)) for shape in spec["shapes"].values())


def run_measured(cmd: list[str], repo: str) -> tuple[float, float]:
  """(peak RSS in GiB, seconds) of one command in its own process; its output goes to this one's."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=repo)
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
  return usage.ru_maxrss / 2 ** 20, time.perf_counter() - start


def set_saved_respacing(workdir: str, respacing: str) -> None:
  """Rewrites the sampling steps in the config saved with a workdir's checkpoint (an Orbax JSON item)."""
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    path = os.path.join(workdir, "checkpoints", step, "config", "metadata")
    with open(path) as f:
      saved = json.load(f)
    saved["sample"]["respacing"] = respacing
    with open(path, "w") as f:
      json.dump(saved, f)


def disk_gb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2 ** 30


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="A directory for the state dicts and workdirs (~8 GiB).")
  parser.add_argument("--repo", default=HERE, help="The checkout whose commands to measure.")
  parser.add_argument("--cascade", action="store_true", help="Also the upsampler and the 64 -> 256 cascade.")
  parser.add_argument("--respacing", default="", help="The base model's sampling steps (default: the config's 100).")
  parser.add_argument("--upsample_respacing", default="fast27", help="The upsampler's steps.")
  parser.add_argument("--skip_convert", action="store_true", help="Reuse the workdirs already under --out.")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  python, prompt = sys.executable, "--config.sample.prompts=an oil painting of a corgi"
  models = ["base", "upsample"] if args.cascade else ["base"]
  for model in [] if args.skip_convert else models:
    npz, workdir = os.path.join(args.out, f"{model}.npz"), os.path.join(args.out, model)
    count = write_random_state_dict(model, npz)
    param_gb = 4 * count / 2 ** 30
    rss, seconds = run_measured([python, "-m", "glide_jax.convert", f"--model={model}", f"--checkpoint={npz}",
                                 f"--workdir={workdir}"], args.repo)
    size = disk_gb(workdir)
    print(f"RESULT {model}: {count:,} parameters = {param_gb:.3f} GiB float32 | converted workdir {size:.3f} GiB "
          f"({size / param_gb:.2f}x) | convert peak RSS {rss:.2f} GiB, {seconds:.0f} s", flush=True)
    os.remove(npz)
  base_gb = 4 * json.load(open(SHAPES))["base"]["num_params"] / 2 ** 30
  steps = [f"--config.sample.respacing={args.respacing}"] if args.respacing else []
  rss, seconds = run_measured([python, "main.py", "--config=configs/glide_base.py", "--mode=sample",
                               f"--workdir={os.path.join(args.out, 'base')}", prompt, *steps], args.repo)
  print(f"RESULT sample base (1 prompt, {args.respacing or '100'} steps): peak RSS {rss:.2f} GiB "
        f"({rss / base_gb:.2f}x the base parameters), {seconds:.0f} s", flush=True)
  if args.cascade:
    if args.respacing:  # The base stage samples with the settings saved in its workdir: set them there.
      set_saved_respacing(os.path.join(args.out, "base"), args.respacing)
    both_gb = base_gb + 4 * json.load(open(SHAPES))["upsample"]["num_params"] / 2 ** 30
    rss, seconds = run_measured([python, "main.py", "--config=configs/glide_upsample.py", "--mode=sample",
                                 f"--workdir={os.path.join(args.out, 'upsample')}",
                                 f"--config.sample.base_workdir={os.path.join(args.out, 'base')}",
                                 f"--config.sample.respacing={args.upsample_respacing}", prompt], args.repo)
    up_gb = both_gb - base_gb
    print(f"RESULT cascade (base {args.respacing or '100'} steps, upsampler {args.upsample_respacing}): peak RSS "
          f"{rss:.2f} GiB ({rss / both_gb:.2f}x both models' parameters, {rss / up_gb:.2f}x the upsampler's), "
          f"{seconds:.0f} s", flush=True)


if __name__ == "__main__":
  main()
