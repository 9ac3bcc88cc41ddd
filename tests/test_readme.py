"""Every command in the README runs as written: its entry point, flags, --config file and --config.* fields
exist, and the overridden config passes validate_config (nothing is run or downloaded)."""

import ast
import importlib.util
import os
import re
import shlex

import pytest

from glide_jax.config import validate_config
from helpers.paths import REPO

# Entry point → (the source defining its flags, the --mode it fixes).
ENTRY_POINTS = {"python main.py": ("glide_jax/cli.py", None),
                "python -m glide_jax.convert": ("glide_jax/cli.py", "convert"),
                "python -m glide_jax.benchmark": ("glide_jax/cli.py", "benchmark")}
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "helpfull", "help"}


def _readme_commands() -> list[str]:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  commands = []
  for block in blocks:
    for command in re.sub(r"\\\n\s*", " ", block).splitlines():
      command = command.split(" #")[0].strip()
      if command and not command.startswith("#"):
        commands.extend(part.strip() for part in command.split("&&"))
  return commands


def _defined_flags(source: str) -> dict[str, list[str] | None]:
  """{flag name: its enum values, or None} from the DEFINE_* calls of an entry point's source."""
  with open(os.path.join(REPO, source), encoding="utf-8") as f:
    text = f.read()
  defined = {name: None for name in re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", text)}
  defined["mode"] = re.findall(r"^    \"(\w+)\": \"glide_jax\.modes\.", text, re.M)
  return defined


def _load_config(spec: str):
  path, _, variant = spec.partition(":")
  assert os.path.isfile(os.path.join(REPO, path)), f"no config file {path}"
  module_spec = importlib.util.spec_from_file_location("readme_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _override(config, field: str, raw: str) -> None:
  *parents, leaf = field.split(".")
  section = config
  for name in parents:
    assert name in section, f"--config.{field}: no field {name!r}"
    section = section[name]
  assert leaf in section, f"--config.{field}: no such field"
  current = section[leaf]
  if isinstance(current, str):
    value = raw
  else:
    value = ast.literal_eval(raw)
    if isinstance(current, float) and isinstance(value, int):
      value = float(value)
    assert isinstance(value, type(current)), f"--config.{field}={raw}: expected {type(current).__name__}"
  with config.unlocked():
    section[leaf] = value


PYTHON_COMMANDS = [c for c in _readme_commands() if c.startswith(("python main.py", "python -m glide_jax"))]


def test_the_readme_shows_the_main_commands():
  modes = {re.search(r"--mode=(\w+)", c).group(1) if "--mode=" in c else "train"
           for c in PYTHON_COMMANDS if c.startswith("python main.py")}
  assert {"train", "sample", "edit", "eval"} <= modes
  assert "convert" in modes


@pytest.mark.parametrize("command", PYTHON_COMMANDS)
def test_a_readme_command_names_real_flags_and_a_valid_config(command):
  entry = next((e for e in ENTRY_POINTS if command.startswith(e + " ")), None)
  assert entry, f"unknown entry point (add it to ENTRY_POINTS or fix the README): {command}"
  source, fixed_mode = ENTRY_POINTS[entry]
  defined = _defined_flags(source)
  config = None
  for arg in shlex.split(command[len(entry):]):
    name, _, value = arg.removeprefix("--").partition("=")
    assert arg.startswith("--"), f"{arg!r} is not a flag"
    if name == "config":
      config = _load_config(value)
    elif name.startswith("config."):
      assert config is not None, "--config.* before --config"
      _override(config, name.removeprefix("config."), value)
    else:
      assert name in defined or name in ABSL_FLAGS, f"--{name} is not a flag of {source}"
      assert not (name == "mode" and fixed_mode), f"{entry} fixes --mode={fixed_mode}"
      if defined.get(name):
        assert value in defined[name], f"--{name}={value}: choose from {defined[name]}"
  if config is not None:
    validate_config(config)


def _markdown_files() -> list[str]:
  docs = os.path.join(REPO, "docs")
  return [os.path.join(REPO, "README.md")] + sorted(os.path.join(docs, f) for f in os.listdir(docs)
                                                    if f.endswith(".md"))


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_and_picture_in_the_docs_exists(path):
  """A link or picture is read relative to its own file: docs/x.md shows docs/y.png as (y.png)."""
  with open(path, encoding="utf-8") as f:
    targets = re.findall(r"\]\(([^)\s]+)\)", f.read())
  missing = [t for t in targets if not re.match(r"[a-z]+:|#", t)
             and not os.path.exists(os.path.join(os.path.dirname(path), t.split("#")[0]))]
  assert not missing, f"{os.path.relpath(path, REPO)} links to files that are not there: {missing}"
