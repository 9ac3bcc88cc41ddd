"""Where a command's JAX time goes: every trace, lowering and XLA compile (or persistent-cache load) of every
Python process it starts, by test file, by function, and the programs compiled more than once.

  python scripts/compile_log.py [--log=FILE] -- python -m pytest -q -n 2 --dist loadfile
  python scripts/compile_log.py --report=FILE          # the tables of an earlier log

For the duration of the command a start-up hook (a .pth file, active only where $GLIDE_COMPILE_LOG is set) sits
in this interpreter's site-packages, so the test workers and every main.py, script and notebook kernel they
start log through JAX's monitoring events (scripts/compile_log_hook.py); it is removed when the command ends.
Times are wall seconds inside each process: on a busy 2-core machine, about CPU seconds. A program compiled more
than once under one cache key is one that the persistent cache did not serve: one that compiles faster than
jax_persistent_cache_min_compile_time_secs (not cached by design), one from a process that does not write the
cache (JAX writes from process 0 of a multi-process job only), or one two processes compiled at the same time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_log_hook.py")
PTH_NAME = "zz_glide_compile_log.pth"  # Last in the directory's order: after the packages' own .pth files.
EVENTS = {"jaxpr_trace_duration": "trace", "jaxpr_to_mlir_module_duration": "lower"}


def kind(row: dict) -> str:
  """trace, lower, compile (a persistent-cache miss) or load (a hit)."""
  return EVENTS.get(row["event"]) or ("load" if row["hit"] else "compile")


def test_file(row: dict) -> str:
  return row["test"].split("::")[0] or "(outside a test) " + row["argv"][-40:]


def report(rows: list[dict], top: int = 15) -> str:
  """The log's totals, per test file, per compiled function, and the programs compiled more than once."""
  by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  totals, counts = collections.Counter(), collections.Counter()
  by_function, compiles_of_function = collections.Counter(), collections.Counter()
  compiles_of_key, seconds_of_key, name_of_key = collections.Counter(), collections.Counter(), {}
  for row in rows:
    k = kind(row)
    by_file[test_file(row)][k] += row["s"]
    totals[k] += row["s"]
    counts[k] += 1
    if k == "compile":
      by_function[row["fun"]] += row["s"]
      compiles_of_function[row["fun"]] += 1
      if row["key"]:
        compiles_of_key[row["key"]] += 1
        seconds_of_key[row["key"]] += row["s"]
        name_of_key[row["key"]] = row["fun"]
  kinds = ("trace", "lower", "compile", "load")
  lines = ["seconds: " + ", ".join(f"{k} {totals[k]:.1f} ({counts[k]})" for k in kinds), "",
           f"{'test file':60s} " + " ".join(f"{k:>8s}" for k in kinds)]
  for name, seconds in sorted(by_file.items(), key=lambda item: -sum(item[1].values())):
    lines.append(f"{name[-60:]:60s} " + " ".join(f"{seconds[k]:8.1f}" for k in kinds))
  lines += ["", "compiled (cache misses), by function: seconds, compiles"]
  lines += [f"{s:8.1f} {compiles_of_function[f]:5d}  {f}" for f, s in by_function.most_common(top)]
  again = {key: n for key, n in compiles_of_key.items() if n > 1}
  lines += ["", f"programs compiled more than once under one cache key: {len(again)} "
            f"({sum(n - 1 for n in again.values())} extra compiles)"]
  lines += [f"{seconds_of_key[key]:8.1f} x{again[key]}  {name_of_key[key]}"
            for key in sorted(again, key=lambda key: -seconds_of_key[key])[:top]]
  return "\n".join(lines)


def read_log(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_logged(command: list[str], log: str) -> int:
  """Runs `command` with the hook installed and $GLIDE_COMPILE_LOG=log; its exit code."""
  pth = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
  if os.path.exists(pth):
    raise SystemExit(f"error: {pth} exists: another compile_log.py is running, or one was killed (delete it).")
  with open(pth, "w") as f:
    # A module of its own (in sys.modules): the hook's functions outlive the .pth line that imports them.
    f.write(f"import os, sys; os.environ.get('GLIDE_COMPILE_LOG') and (sys.path.insert(0, {os.path.dirname(HOOK)!r}), "
            f"__import__('compile_log_hook'), sys.path.pop(0))\n")
  try:
    return subprocess.call(command, env=dict(os.environ, GLIDE_COMPILE_LOG=log))
  finally:
    os.remove(pth)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--log", default="", help="where the JSON lines go (default: a new temporary file)")
  parser.add_argument("--report", default="", help="print the tables of this log and run nothing")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("command", nargs="*", help="the command to run, after --")
  args = parser.parse_args(argv)
  if args.report:
    print(report(read_log(args.report), args.top))
    return 0
  if not args.command:
    parser.error("give a command after --, or --report=FILE")
  log = args.log or tempfile.mkstemp(prefix="compile_log_", suffix=".jsonl")[1]
  code = run_logged(args.command, log)
  print(report(read_log(log), args.top))
  print(f"\nlog: {log}")
  return code


if __name__ == "__main__":
  sys.exit(main())
