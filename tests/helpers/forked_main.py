"""main.py in processes forked from one that has already imported what main.py imports.

A `main.py` process spends about 2 s of its life importing JAX, Flax, Orbax and TFDS before it reads its
flags; most user-error cases are done a fraction of a second after that. This server imports everything
once, never parses a flag and never starts JAX's backends, then forks a child per request. The child is a
process of its own (its own pid, exit code, stdout and stderr, signal handlers, absl flag state), runs
main.py as `python main.py ...` would, and exits as the interpreter would: non-daemon threads joined,
atexit handlers run, streams flushed.

What a forked child does not exercise is the interpreter's start-up and main.py's imports; the tests that
start main.py from scratch (tests/test_main.py's fresh run and "from another directory") cover those.

Protocol: JSON lines. A request on the server's stdin: {"id", "argv", "cwd", "env", "stdout", "stderr", "module"}
(module: `python -m module`, else main.py). On its stdout, once the child is forked: {"id", "pid"}; once it has
exited: {"id", "returncode"} (negative: killed by that signal, as subprocess says).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
import uuid

from helpers.paths import REPO

MAIN = os.path.join(REPO, "main.py")
# Environment variables the server's imports have already read (JAX reads its own at import): a request must
# give the same values, or a forked child would not be what `python main.py` is.
READ_AT_IMPORT_PREFIXES = ("JAX_", "TF_", "TFDS_", "PYTHON")


def _child(request) -> None:
  """Runs in the forked child; never returns."""
  code = 1
  try:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # One file for both (as stderr=subprocess.STDOUT) shares one file offset, so neither overwrites the other.
    stderr = (os.dup(stdout) if request["stderr"] == request["stdout"]
              else os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
      os.dup2(fd, target)
      os.close(fd)
    import runpy
    module = request.get("module")
    if module:  # python -m MODULE: the working directory first on the path.
      sys.argv = [module, *request["argv"]]
      sys.path[0] = os.getcwd()
    else:  # python main.py: the script's directory first.
      sys.argv = [MAIN, *request["argv"]]
      sys.path[0] = os.path.dirname(MAIN)
    try:
      if module:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
      else:
        runpy.run_path(MAIN, run_name="__main__")
      code = 0
    except SystemExit as e:  # The interpreter's handling of SystemExit's code.
      if e.code is None:
        code = 0
      elif isinstance(e.code, int):
        code = e.code
      else:
        print(e.code, file=sys.stderr)
        code = 1
    except BaseException:  # noqa: BLE001  (as an uncaught exception ends `python main.py`)
      sys.excepthook(*sys.exc_info())
      code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # Python's own shutdown, in its order.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # noqa: BLE001
        pass
  except BaseException:  # noqa: BLE001  (the harness itself failed: say so where the test will look)
    traceback.print_exc()
    code = 70
  finally:
    os._exit(code)


def serve() -> None:
  """Imports what main.py's modes import, then forks a child per request until stdin closes."""
  from glide_jax import cli
  for target in cli.MODES.values():
    __import__(target.split(":")[0])
  from jax._src import xla_bridge
  assert not xla_bridge.backends_are_initialized(), "the server started JAX's backends; a fork would inherit them"
  print(json.dumps({"ready": os.getpid()}), flush=True)

  # Woken by a request on stdin or by SIGCHLD (through a pipe: select then needs no timeout, so an idle server
  # takes no CPU).
  wake_read, wake_write = os.pipe()
  os.set_blocking(wake_write, False)
  signal.set_wakeup_fd(wake_write)
  signal.signal(signal.SIGCHLD, lambda signum, frame: None)
  running = {}  # pid → request id
  pending = b""
  open_ = True
  while open_ or running:
    ready = select.select([0, wake_read] if open_ else [wake_read], [], [])[0]
    if wake_read in ready:
      os.read(wake_read, 1 << 16)
    if 0 in ready:
      chunk = os.read(0, 1 << 16)
      open_ = bool(chunk)
      *lines, pending = (pending + chunk).split(b"\n")
      for line in lines:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
          signal.set_wakeup_fd(-1)
          signal.signal(signal.SIGCHLD, signal.SIG_DFL)
          os.close(wake_read)
          os.close(wake_write)
          _child(request)
        running[pid] = request["id"]
        print(json.dumps({"id": request["id"], "pid": pid}), flush=True)
    while running:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        break
      print(json.dumps({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


class ForkedProcess:
  """A forked main.py child, with the parts of subprocess.Popen's interface the tests use."""

  def __init__(self, args, pid: int, exited: threading.Event, codes: dict[int, int], request_id: int):
    self.args, self.pid = args, pid
    self._exited, self._codes, self._id = exited, codes, request_id

  @property
  def returncode(self):
    return self._codes.get(self._id)

  def poll(self):
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    if not self._exited.wait(timeout):
      raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def send_signal(self, sig: int) -> None:
    if self.returncode is None:  # As Popen: no signal to a process known to have exited (its pid may be reused).
      os.kill(self.pid, sig)

  def terminate(self) -> None:
    self.send_signal(signal.SIGTERM)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)


class MainServer:
  """The test side. `start(argv, stdout=path, stderr=path)` is `subprocess.Popen([python, main.py, *argv])` for a
  forked child of one server process; `run(argv)` is `subprocess.run(..., capture_output=True, text=True)`.
  Thread-safe: several children may run at once."""

  def __init__(self, env: dict[str, str], tmp_dir: str):
    self._env, self._tmp_dir = dict(env), tmp_dir
    path = os.pathsep.join([os.path.join(REPO, "tests"), REPO])
    self._proc = subprocess.Popen([sys.executable, "-c", "from helpers.forked_main import serve; serve()"],
                                  cwd=REPO, env=dict(env, PYTHONPATH=path), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    self._lock = threading.Lock()
    self._next_id = 0
    self._started: dict[int, tuple[threading.Event, list]] = {}
    self._exited: dict[int, threading.Event] = {}
    self._codes: dict[int, int] = {}
    ready = self._proc.stdout.readline()
    if not ready.startswith('{"ready"'):
      raise RuntimeError(f"the main.py server did not start (exit {self._proc.wait()})")
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self._proc.stdout:
      reply = json.loads(line)
      with self._lock:
        if "pid" in reply:
          started, pid = self._started.pop(reply["id"])
          pid.append(reply["pid"])
          started.set()
        else:
          self._codes[reply["id"]] = reply["returncode"]
          self._exited[reply["id"]].set()

  def start(self, argv, stdout: str, stderr: str, cwd: str = REPO, env: dict[str, str] | None = None,
            module: str | None = None):
    """main.py with `argv` (or `python -m module`), output to the files `stdout` and `stderr` (the same path:
    one file, as stderr=subprocess.STDOUT)."""
    env = dict(self._env if env is None else env)
    for key in set(env) | set(self._env):
      if key.startswith(READ_AT_IMPORT_PREFIXES) and key != "PYTHONPATH" and env.get(key) != self._env.get(key):
        raise ValueError(f"${key} differs from the server's; run this case with subprocess")
    argv = [str(a) for a in argv]
    with self._lock:
      request_id, self._next_id = self._next_id, self._next_id + 1
      started, pid = threading.Event(), []
      self._started[request_id] = (started, pid)
      exited = self._exited[request_id] = threading.Event()
      self._proc.stdin.write(json.dumps(dict(id=request_id, argv=argv, cwd=str(cwd), env=env, stdout=str(stdout),
                                             stderr=str(stderr), module=module)) + "\n")
      self._proc.stdin.flush()
    if not started.wait(60):
      raise RuntimeError("the main.py server did not fork")
    return ForkedProcess([module or "main.py", *argv], pid[0], exited, self._codes, request_id)

  def run(self, argv, cwd: str = REPO, env: dict[str, str] | None = None, timeout: float = 300,
          module: str | None = None):
    name = os.path.join(self._tmp_dir, uuid.uuid4().hex)
    proc = self.start(argv, f"{name}.out", f"{name}.err", cwd=cwd, env=env, module=module)
    try:
      proc.wait(timeout)
    finally:
      proc.kill()
    with open(f"{name}.out", encoding="utf-8", errors="replace") as out, \
         open(f"{name}.err", encoding="utf-8", errors="replace") as err:
      return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait(timeout=300)
