"""glide_jax/cli.py: the mode table and the per-mode flags agree with the modes they name. (The flags' errors
through a real process are in test_main.py's USER_ERRORS.)"""

import importlib
import inspect

import pytest
from absl import flags

from glide_jax import cli
from glide_jax.released.options import RELEASED_MODELS


@pytest.mark.parametrize("mode", sorted(cli.MODES))
def test_every_mode_runs_a_function_that_takes_its_flags(mode):
  module_name, function_name = cli.MODES[mode].split(":")
  assert module_name == f"glide_jax.modes.{mode}" and function_name == "run"
  parameters = list(inspect.signature(getattr(importlib.import_module(module_name), function_name)).parameters)
  assert parameters[:2] == ["config", "workdir"]
  assert set(parameters[2:]) == {holder.name for holder in cli.MODE_FLAGS.get(mode, ())}


def test_the_per_mode_flags_name_real_modes_and_models():
  assert set(cli.MODE_FLAGS) | set(cli.REQUIRED_MODE_FLAGS) | set(cli.NO_CONFIG_MODES) | set(cli.NO_WORKDIR_MODES) \
      <= set(cli.MODES)
  model = next(h for h in cli.MODE_FLAGS["convert"] if h.name == "model")
  assert flags.FLAGS[model.name].parser.enum_values == [*RELEASED_MODELS, "clip"]  # clip: the noised CLIP.
