"""Programs kept per process: reused for the same model, recipe (or sampler) and mesh, never for another."""

import ml_collections
import pytest

from glide_jax import sharding
from glide_jax.experiment import Experiment
from glide_jax.train import programs
from helpers.runs import tiny_config


def test_no_host_only_field_is_read_while_the_programs_are_built_and_lowered(monkeypatch):
  """Every config field read from building the Experiment's model to lowering its step could change a program;
  none of them may be one the key leaves out."""
  programs.clear()  # Built here, not taken from an earlier test.
  config = tiny_config()
  config.train.lr_schedule = "cosine"  # Reads num_steps, which the key then keeps.
  before = Experiment(config)  # Validates every field (which reads them all) before recording starts.
  batch = sharding.put_batch(before.batch_source()(0), before.mesh)  # Host data: it reads the data's location.
  sections = {id(config[name]): name for name in config.keys() if isinstance(config[name], ml_collections.ConfigDict)}
  sections[id(config)] = ""
  read, recording_on = set(), [True]
  original = ml_collections.ConfigDict.__getitem__

  def recording(self, key):
    if recording_on[0]:
      read.add(f"{sections.get(id(self), '?')}.{key}".lstrip("."))
    return original(self, key)

  monkeypatch.setattr("glide_jax.experiment.validate_config", lambda config: None)
  monkeypatch.setattr(ml_collections.ConfigDict, "__getitem__", recording)
  exp = Experiment(config)
  recording_on[0] = False  # The key reads every field by design.
  key = exp._program_key
  recording_on[0] = True
  state = exp.init_fn()
  exp.train_step_fn().lower(state, batch, exp.train_rng)
  monkeypatch.undo()

  host_only = {f"{section}.{name}" for section, names in programs.HOST_ONLY.items() for name in names or ()}
  assert not read & host_only, sorted(read & host_only)
  assert not {r for r in read if r.split(".")[0] in ("sample", "edit", "eval")}, sorted(read)
  assert {"train.learning_rate", "train.num_steps", "train.ema_decay", "model.model_channels"} <= read, sorted(read)
  # A read of a copy of the config (its sections unknown to the map above) is checked by field name.
  unknown = {r.split(".", 1)[1] for r in read if r.startswith("?.")}
  assert len(unknown) < 3, sorted(read)
  assert not unknown & {name for names in programs.HOST_ONLY.values() for name in names or ()}, sorted(unknown)
  assert '"num_steps": 20' in key[0]


def test_one_program_per_model_recipe_and_mesh():
  def step_of(**changes):
    config = tiny_config()
    for field, value in changes.items():
      section, name = field.split("__")
      config[section][name] = value
    return Experiment(config).train_step_fn()

  same = step_of()
  assert step_of(train__num_steps=7, train__checkpoint_every=3, train__log_every=1, sample__respacing="3",
                 data__train_split="train[:64]", eval__samples_per_digit=2) is same
  assert step_of(train__learning_rate=5e-4) is not same
  assert step_of(train__ema_decay=0.5) is not same
  assert step_of(model__dropout=0.1) is not same
  # A schedule that decays towards num_steps makes it part of the program.
  assert step_of(train__lr_schedule="cosine", train__num_steps=7) is not step_of(train__lr_schedule="cosine")
  exp = Experiment(tiny_config(), mesh=sharding.make_mesh((1, 1), Experiment(tiny_config()).mesh.devices.flat[:1]))
  assert exp.train_step_fn() is not same


@pytest.mark.parametrize("schedule,kept", [("constant", False), ("cosine", True)])
def test_the_key_keeps_num_steps_only_for_a_decaying_schedule(schedule, kept):
  config = tiny_config()
  config.train.lr_schedule = schedule
  mesh = Experiment(config).mesh
  assert ('"num_steps"' in programs.program_key(config, mesh)[0]) == kept
  assert '"checkpoint_every"' not in programs.program_key(config, mesh)[0]


def test_one_sampler_per_model_spec_and_mesh():
  sampler = Experiment(tiny_config()).sampler()
  assert Experiment(tiny_config(num_steps=3, log_every=1)).sampler() is sampler
  assert Experiment(tiny_config()).sampler(spec=sampler.spec.replace(respacing="3")) is not sampler
  other_model = tiny_config()
  other_model.model.dropout = 0.1
  assert Experiment(other_model).sampler() is not sampler
  bound = Experiment(tiny_config()).sampler(params={"w": 1})
  assert bound is not sampler and bound.params == {"model": {"w": 1}} and sampler.params is None
