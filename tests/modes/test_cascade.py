"""The cascade (--mode=sample on an upsampler's workdir), end to end on tiny models trained for two steps:
a 16 px base model (byte tokens), then a 64 px upsampler of its samples (GPT-2 tokens)."""

import os

import jax
import numpy as np
import pytest

from configs import tiny
from glide_jax import data as data_lib
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.model import init_params
from glide_jax.modes.edit import edit_grid
from glide_jax.modes.edit import run as edit_and_save
from glide_jax.modes.eval import run as evaluate
from glide_jax.modes.sample import base_experiment, upsample
from glide_jax.modes.sample import run as sample_and_save
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
  # Two levels and attention at 32x32 (one level would attend over all 4,096 pixels).
  config.model.channel_mult, config.model.attention_resolutions = (1, 2), (32,)
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


def test_the_upsampler_stage_runs_the_upsamplers_own_sampler_unguided_at_its_temperature(cascade, monkeypatch):
  """glide-text2im enlarges with DDIM in text2im.ipynb and DDPM in inpaint.ipynb: the stage takes the sampler
  of the upsampler's config (glide_config sets it per released model), not the base run's."""
  config, _, up_dir, npz = cascade
  config = config.copy_and_resolve_references()
  config.sample.sampler, config.sample.ddim_eta = "ddim", 0.0
  exp = Experiment(config, up_dir)
  asked = []

  def spy(params=None, spec=None):
    asked.append(spec)
    raise InterruptedError  # Stop before compiling: the spec is what this test checks.

  monkeypatch.setattr(exp, "sampler", spy)
  with pytest.raises(InterruptedError):
    upsample(exp, None, npz["low_res"][:1], PROMPTS[:1], jax.random.key(0))
  assert asked == [SamplerSpec(sampler="ddim", respacing="3", eta=0.0, temperature=0.997, guidance="none")]


@pytest.fixture(scope="module")
def inpainting_upsampler(cascade, tmp_path_factory):
  """An upsampler that takes the known image and mask (upsample-inpaint's inputs), written as a converted
  workdir is: parameters alone, here random, since what is tested is the pipeline and the known region."""
  config = cascade[0].copy_and_resolve_references()
  config.model.inpaint = True
  e = config.edit
  e.images, e.mask, e.prompts, e.guidance_scales = "test:0,5", "bottom", "7", (2.0,)
  workdir = str(tmp_path_factory.mktemp("upsample_inpaint"))
  exp = Experiment(config, workdir)
  exp.write_params(jax.jit(lambda rng: init_params(exp.model, rng))(jax.random.key(1)))  # One program, not op by op.
  return config, workdir


def test_an_inpainting_upsampler_edits_in_two_stages_keeping_the_known_pixels_at_both_sizes(
    cascade, inpainting_upsampler, capsys):
  """inpaint.ipynb: the base run edits at its size, then the upsampler enlarges each edit given the
  full-size image and the mask enlarged by nearest neighbour."""
  _, base_dir, _, _ = cascade
  config, workdir = inpainting_upsampler
  paths = edit_and_save(config, workdir)
  with np.load(paths["npz"]) as f:
    low, edits = f["low_res_edits"], f["edits"]
  assert low.shape == (2, 1, 1, 16, 16, 1) and edits.shape == (2, 1, 1, 64, 64, 1)
  test16 = data_lib.load_dataset(tiny.get_config().data, config.data.test_split).images[[0, 5]]
  test64 = data_lib.load_dataset(config.data, config.data.test_split).images[[0, 5]]
  np.testing.assert_array_equal(low[:, 0, 0, :8], test16[:, :8])  # The kept top half, exact at both sizes.
  np.testing.assert_array_equal(edits[:, 0, 0, :32], test64[:, :32])
  assert not np.array_equal(edits[:, 0, 0, 32:], test64[:, 32:])
  # The first stage is the base run's own edit, at the edit's guidance scale.
  base = Experiment.from_workdir(base_dir)
  params, _ = base.load_params()
  known = np.ones((2, 16, 16, 1), np.float32)
  known[:, 8:] = 0
  expected = edit_grid(base, params, test16, known, ["7"], [2.0],
                       jax.random.fold_in(stream_key(config.seed, "edit"), 0))
  np.testing.assert_array_equal(low, expected)
  out = capsys.readouterr().out
  assert "by the replacement method (16 px), then the upsampler's inpainting model (64 px)" in out
  assert "the kept pixels differ from the originals by at most 0 at 16 px and 0 at 64 px at uint8" in out


def test_clip_guidance_asked_of_the_upsampler_guides_the_base_stage(cascade, tiny_clip_run):
  """As glide-text2im's clip_guided notebook: the base stage CLIP-guided, the upsampler unguided."""
  config, _, up_dir, _ = cascade
  _, clip_workdir = tiny_clip_run
  guided = config.copy_and_resolve_references()
  guided.sample.guidance, guided.sample.clip_workdir = "clip", clip_workdir
  base = base_experiment(Experiment(guided, up_dir))
  assert base.sampler_spec.guidance == "clip" and base.sampler().clip_config.image_size == 16
  assert base_experiment(Experiment(config, up_dir)).sampler_spec.guidance == "classifier_free"
