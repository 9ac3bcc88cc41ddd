"""Peak memory and time of a large caption folder: preparing it once, then drawing training batches from it.

Writes N small PNGs (MNIST's training digits, repeated as needed, each with two captions) and their
captions.jsonl into --out, then runs, each in its own process whose peak RSS the kernel reports: Python with
the data modules imported (the baseline), the folder's first load (which decodes, checks and prepares every
image into the cache), a second load (the prepared file, memory-mapped), and --steps batches of --batch.

  python scripts/caption_folder_memory.py --out=/tmp/caption_memory --images=100000 [--image_size=64]

Each phase reports the RSS once its imports are done, the peak RSS of its work alone (the kernel's high-water
mark, reset after the imports through /proc/self/clear_refs), and the anonymous RSS at its end (the
memory-mapped images count in RSS as file pages, which the kernel may drop and read again).

Nothing is downloaded: MNIST is read from $TFDS_DATA_DIR. The folder and the cache stay in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CHILD = r"""
import os, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from glide_jax import caption_data, data
from glide_jax.model.tokenizer import get_tokenizer
phase, folder, size, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def status(key):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
imported = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
  f.write("5")  # Resets the peak (VmHWM) to the current RSS: what follows is measured alone.
start = time.perf_counter()
if phase != "baseline":
  ds = caption_data.load_folder(folder, "train", size, 1, verbose=False)
  if phase == "batches":
    source = data.BatchSource(ds, get_tokenizer("byte"), 32, ("{{name}}",), batch, seed=0)
    start = time.perf_counter()
    for step in range(steps):
      source(step)
print(time.perf_counter() - start, status("RssAnon"), imported, status("VmHWM"))
"""


def write_folder(folder: str, count: int) -> None:
  """`count` MNIST training digits as PNGs in subfolders of 1,000, two captions each."""
  import numpy as np
  from PIL import Image

  from glide_jax import data

  mnist = data.load_split("mnist", "train", image_size=28, download=False)
  with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
    for i in range(count):
      k = i % len(mnist)
      name = f"{i // 1000:03d}/{i:06d}.png"
      os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
      Image.fromarray(np.asarray(mnist.images[k][..., 0])).save(os.path.join(folder, name))
      word = WORDS[mnist.labels[k]]
      f.write(json.dumps({"file": name, "caption": [f"a handwritten {word}", f"the digit {mnist.labels[k]}"]}) + "\n")


def run_phase(phase: str, folder: str, args, env: dict) -> tuple[float, float, float, float]:
  """(seconds, RSS after the imports, peak RSS of the phase's work, anonymous RSS at its end), in MiB, of one
  phase in a fresh process. Pages of the memory-mapped file count in RSS, but as file pages the kernel can
  drop and read again, unlike anonymous memory."""
  command = [sys.executable, "-c", CHILD.format(repo=HERE), phase, folder, str(args.image_size), str(args.steps),
             str(args.batch)]
  with tempfile.TemporaryFile("w+") as out:
    process = subprocess.Popen(command, env=env, stdout=out)
    _, status, _ = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
      raise SystemExit(f"{phase} failed (exit {os.waitstatus_to_exitcode(status)})")
    out.seek(0)
    seconds, anon, imported, work_peak = out.read().split()[-4:]
  return float(seconds), int(imported) / 1024, int(work_peak) / 1024, int(anon) / 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--images", type=int, default=100_000)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  sys.path.insert(0, HERE)
  from glide_jax.runtime import describe_machine

  folder = os.path.join(args.out, "folder")
  if not os.path.isfile(os.path.join(folder, "captions.jsonl")):
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    write_folder(folder, args.images)
    print(f"wrote {args.images} PNGs in {time.perf_counter() - start:.0f} s", flush=True)
  cache = os.path.join(args.out, f"cache_{args.image_size}px")
  shutil.rmtree(cache, ignore_errors=True)  # So that the first load prepares the folder.
  env = dict(os.environ, GLIDE_CACHE_DIR=cache, JAX_PLATFORMS="cpu")
  print(f"on {describe_machine()}")
  for phase in ("baseline", "prepare", "load", "batches"):
    seconds, imported, work_peak, anon = run_phase(phase, folder, args, env)
    what = {"baseline": "imports only", "prepare": f"first load: {args.images} images decoded and prepared",
            "load": "second load: the prepared file memory-mapped",
            "batches": f"{args.steps} batches of {args.batch} after a load"}[phase]
    print(f"{phase:9s} {seconds:7.2f} s  RSS after imports {imported:6.1f} MiB, peak during the work "
          f"{work_peak:7.1f} MiB, anonymous at the end {anon:7.1f} MiB  ({what})", flush=True)


if __name__ == "__main__":
  main()
