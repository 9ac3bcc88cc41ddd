"""Start-up hook of scripts/compile_log.py: once JAX is imported, this process appends a JSON line to
$GLIDE_COMPILE_LOG for every trace, lowering and backend compile (with whether the persistent cache served it,
and its cache key), naming the test that was running ($PYTEST_CURRENT_TEST) and the process's last arguments.

It waits for JAX's own modules to be imported (an import hook) rather than importing JAX itself, so that
whatever configures JAX before importing it (tests/conftest.py) still does."""
import json
import os
import sys
import threading

LOG = os.environ.get("GLIDE_COMPILE_LOG")
_state = threading.local()


def _write(rec: dict) -> None:
  with open(LOG, "a") as f:
    f.write(json.dumps(rec) + "\n")


def _duration(event: str, duration: float, **kw) -> None:
  if not event.startswith("/jax/core/compile/"):
    return
  hit, key = getattr(_state, "hit", False), getattr(_state, "key", "")
  if event.endswith("backend_compile_duration"):
    _state.hit, _state.key = False, ""
  _write({"pid": os.getpid(), "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
          "argv": " ".join(sys.argv[-4:])[-200:], "event": event.rsplit("/", 1)[-1],
          "fun": str(kw.get("fun_name", "")), "s": round(duration, 4), "hit": hit, "key": key[-20:]})


def _wrap_compiler(module) -> None:
  """Whether the persistent cache served the compile that follows, and its key: JAX says both only by which of
  these it calls, with the key."""
  for name, hit in (("log_persistent_cache_miss", False), ("log_persistent_cache_hit", True)):
    original = getattr(module, name)

    def logged(module_name, cache_key, *a, _original=original, _hit=hit, **k):
      _state.hit, _state.key = _hit, cache_key
      return _original(module_name, cache_key, *a, **k)
    setattr(module, name, logged)


def _wrap_monitoring(module) -> None:
  module.register_event_duration_secs_listener(_duration)


_HOOKS = {"jax._src.monitoring": _wrap_monitoring, "jax._src.compiler": _wrap_compiler}


class _Finder:
  """Finds JAX's monitoring and compiler modules as usual, and hooks them once they have run."""
  def find_spec(self, name, path, target=None):
    if name not in _HOOKS:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        break
    else:
      return None
    original = spec.loader.exec_module

    def exec_module(module):
      original(module)
      _HOOKS[name](module)
    spec.loader.exec_module = exec_module
    return spec


if LOG:
  sys.meta_path.insert(0, _Finder())
