"""The cascade (--mode=sample on an upsampler's workdir), end to end on tiny models trained for two steps:
a 16 px base model (byte tokens), then a 64 px upsampler of its samples (GPT-2 tokens)."""

import os

import jax
import numpy as np
import pytest

from configs import tiny
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.modes.eval import run as evaluate
from glide_jax.modes.sample import run as sample_and_save
from glide_jax.modes.sample import upsample
from glide_jax.modes.train import run as train
from glide_jax.rng import stream_key
from glide_jax.sampling.guided import SamplerSpec

PROMPTS = ["7", "three"]
SCALES = (0.0, 2.0)


def trained(config, workdir):
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  train(config, workdir)
  return workdir


def upsampler_config(base_workdir):
  config = tiny.get_config()
  config.data.image_size = 64
  config.model.attention_resolutions = (32,)
  config.model.low_res_size = 16
  config.model.tokenizer = "gpt2"  # Each stage tokenizes the prompts itself; GLIDE's BPE trains here too.
  config.train.batch_size = 8
  s = config.sample
  s.base_workdir, s.respacing, s.upsample_temp = base_workdir, "3", 0.997
  s.prompts, s.guidance_scales, s.num_per_prompt, s.batch_size = ",".join(PROMPTS), SCALES, 1, 4
  return config


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
  base_config = tiny.get_config()
  base_config.sample.respacing = "4"
  base_dir = trained(base_config, str(tmp_path_factory.mktemp("base")))
  up_dir = str(tmp_path_factory.mktemp("upsampler"))
  config = upsampler_config(base_dir)
  trained(config, up_dir)
  paths = sample_and_save(config, up_dir)
  with np.load(paths["npz"]) as f:
    npz = {k: f[k] for k in f.files}
  return config, base_dir, up_dir, npz


def test_the_cascade_enlarges_the_base_models_guided_samples(cascade):
  config, base_dir, _, npz = cascade
  assert npz["images"].shape == (4, 64, 64, 1) and npz["images"].dtype == np.uint8
  assert npz["low_res"].shape == (4, 16, 16, 1)
  assert npz["guidance"].tolist() == [0.0, 2.0, 0.0, 2.0] and npz["prompts"].tolist() == ["7", "7", "three", "three"]
  # The first stage is the base run's own guided sampler, with the settings saved in its workdir.
  base = Experiment.from_workdir(base_dir)
  assert base.config.sample.respacing == "4" and base.model_config.image_size == 16
  params, _ = base.load_params()
  low = base.sample_grid(base.sampler(params, SamplerSpec(respacing="4")), PROMPTS, SCALES, 1,
                         jax.random.fold_in(stream_key(config.seed, "sample"), 0))
  np.testing.assert_array_equal(npz["low_res"], low.reshape(-1, 16, 16, 1))


def test_the_upsampler_stage_depends_on_its_low_res_input_and_is_deterministic(cascade):
  config, _, up_dir, npz = cascade
  exp = Experiment(config, up_dir)
  params, _ = exp.load_params()
  low = npz["low_res"][:2]
  rng = jax.random.key(3)
  first = upsample(exp, params, low, PROMPTS, rng)
  np.testing.assert_array_equal(first, upsample(exp, params, low, PROMPTS, rng))
  assert not np.array_equal(first, upsample(exp, params, 255 - low, PROMPTS, rng))


def test_an_upsampler_without_a_fitting_base_is_a_user_error(cascade):
  config, _, up_dir, _ = cascade
  no_base = config.copy_and_resolve_references()
  no_base.sample.base_workdir = ""
  with pytest.raises(UserError, match="--config.sample.base_workdir=DIR"):
    sample_and_save(no_base, up_dir)
  itself = config.copy_and_resolve_references()
  itself.sample.base_workdir = up_dir
  with pytest.raises(UserError, match="holds a 64 px, 1-channel upsampler; this upsampler enlarges 16 px"):
    sample_and_save(itself, up_dir)
  empty = config.copy_and_resolve_references()
  empty.sample.base_workdir = os.path.dirname(up_dir)
  with pytest.raises(UserError, match="holds no model"):
    sample_and_save(empty, up_dir)
  with pytest.raises(UserError, match="--mode=eval needs a model that generates from prompts"):
    evaluate(config, up_dir)
