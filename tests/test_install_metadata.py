"""pyproject.toml's ranges hold requirements.txt's pins, and the test tools stay out of the runtime pins."""

import os
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from helpers.paths import REPO

TEST_TOOLS = {"pytest", "pytest-xdist", "pytest-cov", "ruff", "papermill", "ipykernel"}


def _pins(name: str) -> dict[str, str]:
  pins = {}
  with open(os.path.join(REPO, name)) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line and not line.startswith("-r"):
        package, version = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line).groups()
        pins[canonicalize_name(package)] = version
  return pins


def _project() -> dict:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_every_runtime_pin_is_inside_the_declared_range():
  pins = _pins("requirements.txt")
  declared = {canonicalize_name(r.name): r.specifier for r in map(Requirement, _project()["dependencies"])}
  assert sorted(declared) == sorted(pins), "pyproject.toml dependencies and requirements.txt name other packages"
  outside = {name: (pins[name], str(spec)) for name, spec in declared.items() if pins[name] not in spec}
  assert not outside, outside
  assert all(spec for spec in declared.values()), "every dependency has a range"


def test_test_tools_are_dev_requirements_only():
  runtime, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
  assert not TEST_TOOLS & set(runtime)
  assert TEST_TOOLS <= set(dev)
  with open(os.path.join(REPO, "requirements-dev.txt")) as f:
    assert "-r requirements.txt" in f.read().splitlines()


def test_python_version_and_license():
  project = _project()
  assert f"{sys.version_info.major}.{sys.version_info.minor}" in SpecifierSet(project["requires-python"])
  assert "3.10" not in SpecifierSet(project["requires-python"])  # numpy 2.4 and jax 0.10 need 3.11.
  assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
  with open(os.path.join(REPO, "LICENSE")) as f:
    text = f.read()
  assert text.startswith("MIT License") and "Copyright (c) 2021 OpenAI" in text  # The GPT-2 vocabulary's notice.
