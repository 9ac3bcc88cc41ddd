"""Process set-up: the persistent compilation cache is on by default, a second process loads what the first
compiled, and it can be moved or turned off."""

import gc
import json
import os
import subprocess
import sys
import weakref

from glide_jax.runtime import (
  CPU_MEMORY_SCHEDULER,
  GC_YOUNG_THRESHOLD,
  describe_cpu,
  describe_machine,
  tune_gc,
  use_all_cpu_cores,
)
from helpers.paths import REPO

# Compiles one small program and prints where the cache is and how many cache hits and misses it saw.
PROGRAM = """
import json, jax, jax.numpy as jnp
from glide_jax.runtime import enable_compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = enable_compilation_cache()
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"path": path, "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def run_program(**env_vars):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "GLIDE_JAX_CACHE_DIR")}
  env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_vars)
  out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return {**json.loads(out.stdout.strip().splitlines()[-1]), "stdout": out.stdout}


def test_a_second_process_loads_the_first_ones_compiled_program(tmp_path):
  cache = str(tmp_path / "cache")
  first = run_program(GLIDE_JAX_CACHE_DIR=cache)
  assert first["path"] == cache and first["hits"] == 0 and first["misses"] >= 1
  entries = sorted(os.listdir(cache))
  assert entries
  second = run_program(GLIDE_JAX_CACHE_DIR=cache)
  assert second["hits"] >= 1 and second["misses"] == 0
  assert sorted(os.listdir(cache)) == entries  # Nothing compiled again.


def test_the_default_location_and_turning_it_off(tmp_path):
  default = run_program(XDG_CACHE_HOME=str(tmp_path / "xdg"))
  assert default["path"] == str(tmp_path / "xdg" / "glide_jax" / "jax") and os.listdir(default["path"])
  off = run_program(GLIDE_JAX_CACHE_DIR="off", XDG_CACHE_HOME=str(tmp_path / "xdg2"))
  assert off["path"] is None and off["hits"] == 0 and not os.path.exists(tmp_path / "xdg2")


def test_jax_own_cache_setting_is_respected(tmp_path):
  result = run_program(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"), GLIDE_JAX_CACHE_DIR=str(tmp_path / "ours"))
  assert result["path"] == str(tmp_path / "jax") and not os.path.exists(tmp_path / "ours")


def test_an_unwritable_cache_dir_warns_and_runs_without(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = run_program(GLIDE_JAX_CACHE_DIR=str(blocker / "cache"))
  assert result["path"] is None
  assert f"warning: compilation cache off: cannot create {blocker / 'cache'}" in result["stdout"]
  assert "GLIDE_JAX_CACHE_DIR" in result["stdout"]


def test_use_all_cpu_cores_adds_a_device_per_core_and_the_memory_scheduler_unless_given(monkeypatch):
  """Only XLA_FLAGS changes (JAX, already started in this process, does not read it again)."""
  cores = len(os.sched_getaffinity(0))
  monkeypatch.delenv("GLIDE_HOST_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
  use_all_cpu_cores()
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_dump_to=/nowhere", CPU_MEMORY_SCHEDULER, f"--xla_force_host_platform_device_count={cores}"]
  given = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT --xla_force_host_platform_device_count=3"
  monkeypatch.setenv("XLA_FLAGS", given)
  use_all_cpu_cores()
  assert os.environ["XLA_FLAGS"] == given
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("GLIDE_HOST_DEVICES", "0")
  use_all_cpu_cores()
  assert os.environ["XLA_FLAGS"] == CPU_MEMORY_SCHEDULER


def test_the_machine_is_named_by_cpu_model_cores_and_avx512(tmp_path, monkeypatch):
  """Timings name their CPU: XLA:CPU's speed differs several-fold with and without AVX-512."""
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\n"
                  "processor\t: 1\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
  assert describe_cpu(str(info)) == "AMD EPYC 9B14, 2 cores, avx512f"
  info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2\n")
  assert describe_cpu(str(info)) == "AMD EPYC, 2 cores, no avx512f"
  assert describe_cpu(str(tmp_path / "missing")).endswith(", 2 cores")  # Not Linux: what `platform` knows.
  assert describe_machine().startswith(f"CPU: {describe_cpu()} (") and "JAX device" in describe_machine()


# Four threads allocate, then glibc's malloc_stats() prints one "Arena N:" block per arena to stderr.
ARENAS = """
import ctypes, sys, threading
from glide_jax import runtime
print(runtime.tune_malloc())
threads = [threading.Thread(target=lambda: [bytearray(100_000) for _ in range(10)]) for _ in range(4)]
for t in threads:
  t.start()
for t in threads:
  t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _python(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
  """`script` in a fresh interpreter (the allocator is set once per process), which must succeed."""
  result = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  return result


def _arenas(env: dict) -> tuple[str, int]:
  result = _python(ARENAS, env)
  return result.stdout.strip(), result.stderr.count("Arena ")


def test_threads_share_one_malloc_arena_unless_the_user_sets_malloc_arena_max():
  """The allocator setting of every glide-jax process (docs/benchmarks.md): threads that would each get an
  arena of their own share the main one; a user's MALLOC_ARENA_MAX is left as it is."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  assert _arenas(env) == ("('one arena', 'freed memory kept')", 1)
  applied, arenas = _arenas(dict(env, MALLOC_ARENA_MAX="3"))
  assert applied == "('freed memory kept',)" and 1 < arenas <= 3


# Each round allocates six buffers of 10 MB and one of 40 MB (above any mmap threshold glibc allows), writes
# them and frees them, as a step does with its large buffers; prints the page faults of rounds 2-5 (the first
# maps the memory in whatever the setting).
ROUNDS = """
import ctypes, resource, sys
from glide_jax import runtime
if sys.argv[1] == "tuned":
  print(runtime.tune_malloc())
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buffers = [bytearray(10 * 2**20) for _ in range(6)] + [bytearray(40 * 2**20)]
  for b in buffers:
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(b)), 1, len(b))
  del buffers, b
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


def _faults_after_the_first_round(how: str, env: dict) -> list[str]:
  return _python(ROUNDS, env, how).stdout.splitlines()


def test_memory_a_step_frees_is_kept_for_the_next_unless_the_user_sets_the_thresholds():
  """glibc maps a buffer above its mmap threshold on its own and trims the heap by thresholds that follow the
  largest buffer freed: the 100 MB freed is handed back and faulted in again every round (25,600 pages a round).
  Tuned, the rounds after the first reuse it; a user's MALLOC_MMAP_THRESHOLD_ is left as it is."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  assert int(_faults_after_the_first_round("glibc", env)[-1]) > 4 * 10_000
  applied, faults = _faults_after_the_first_round("tuned", env)
  assert applied == "('one arena', 'freed memory kept')" and int(faults) < 1_000
  applied, faults = _faults_after_the_first_round("tuned", dict(env, MALLOC_MMAP_THRESHOLD_="131072"))
  assert applied == "('one arena',)" and int(faults) > 4 * 10_000


def test_tune_gc_freezes_what_exists_and_still_collects_later_cycles():
  threshold = gc.get_threshold()
  gc.unfreeze()
  try:
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:]) and gc.get_freeze_count() > 1000

    class Node:
      pass

    cycle = Node()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert alive() is None
  finally:
    gc.set_threshold(*threshold)
    gc.freeze()
