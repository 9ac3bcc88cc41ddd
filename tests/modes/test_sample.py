"""--mode=sample: the guidance sweep from a trained tiny checkpoint, its files, and its user errors."""

import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from glide_jax import data as data_lib
from glide_jax.clip.experiment import ClipExperiment
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.model import init_params
from glide_jax.modes.convert import run as convert_run
from glide_jax.modes.sample import run as sample_and_save
from glide_jax.modes.train import run as train
from glide_jax.sampling.guided import SamplerSpec
from helpers.paths import REPO
from helpers.runs import run_main
from helpers.trees import assert_trees_equal

PROMPTS = ["7", "seven", "3"]
SCALES = (0.0, 2.0)
K = 2
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def sample_config():
  config = tiny.get_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  config.sample.prompts = ",".join(PROMPTS)
  config.sample.guidance_scales = SCALES
  config.sample.num_per_prompt = K
  return config


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sample_run"))
  config = sample_config()
  train(config, workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  paths = sample_and_save(config, workdir)
  return workdir, paths


def test_writes_a_grid_per_scale_the_sweep_figure_and_npz(sampled):
  workdir, paths = sampled
  out = os.path.join(workdir, "samples")
  assert sorted(os.listdir(out)) == ["guidance_0.png", "guidance_2.png", "guidance_sweep.png", "samples.npz"]
  assert paths == {"grid_0": os.path.join(out, "guidance_0.png"), "grid_2": os.path.join(out, "guidance_2.png"),
                   "figure": os.path.join(out, "guidance_sweep.png"), "npz": os.path.join(out, "samples.npz")}
  figure = np.asarray(Image.open(paths["figure"]))
  assert figure.ndim == 3 and figure.shape[-1] == 3
  # At least one row per prompt and one column per scale of 16x16 cells, zoomed 2x.
  assert figure.shape[0] > len(PROMPTS) * 32 and figure.shape[1] > len(SCALES) * K * 32


def test_npz_contents(sampled):
  _, paths = sampled
  with np.load(paths["npz"]) as f:
    data = {k: f[k] for k in f.files}
  n = len(PROMPTS) * len(SCALES) * K
  images = data["images"]
  assert images.dtype == np.uint8 and images.shape == (n, 16, 16, 1)
  assert images.std() > 0  # Not a blank picture.
  # Order: prompt-major, then scale, then repeat.
  assert data["prompts"].tolist() == ["7"] * 4 + ["seven"] * 4 + ["3"] * 4
  assert data["digits"].tolist() == [7] * 4 + [7] * 4 + [3] * 4
  assert data["guidance"].tolist() == [0.0, 0.0, 2.0, 2.0] * 3
  assert int(data["step"]) == 2
  # The K repeats of one (prompt, scale) start from different noise.
  for i in range(0, n, K):
    assert np.any(images[i] != images[i + 1])


def test_grid_pngs_hold_the_npz_images(sampled):
  _, paths = sampled
  with np.load(paths["npz"]) as f:
    images = f["images"].reshape(len(PROMPTS), len(SCALES), K, 16, 16)
  pad = 2
  for j, scale in enumerate(SCALES):
    grid = np.asarray(Image.open(paths[f"grid_{scale:g}"]))
    # K rows (repeats) by P columns (prompts), 2-pixel white padding.
    assert grid.dtype == np.uint8 and grid.shape == (K * (16 + pad) + pad, len(PROMPTS) * (16 + pad) + pad)
    for r in range(K):
      for c in range(len(PROMPTS)):
        y, x = pad + r * (16 + pad), pad + c * (16 + pad)
        np.testing.assert_array_equal(grid[y:y + 16, x:x + 16], images[c, j, r])
    assert np.all(grid[:pad] == 255) and np.all(grid[:, :pad] == 255)


def test_no_checkpoint_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="No checkpoint"):
    sample_and_save(sample_config(), str(tmp_path))
  assert not os.path.exists(tmp_path / "samples")


def test_missing_workdir_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    sample_and_save(sample_config(), str(tmp_path / "nowhere"))
  assert not os.path.exists(tmp_path / "nowhere")


def test_workdir_that_is_a_file_is_a_user_error(tmp_path):
  (tmp_path / "file").write_text("keep me\n")
  with pytest.raises(UserError, match="is a file, not a directory"):
    sample_and_save(sample_config(), str(tmp_path / "file"))
  assert (tmp_path / "file").read_text() == "keep me\n"


def test_class_names_of_mnist():
  assert data_lib.class_names_of(tiny.get_config().data) == CLASS_NAMES


def test_main_sample_without_checkpoint_exits_2_with_one_paragraph(tmp_path):
  result = run_main(tmp_path, mode="sample")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  error = result.stderr[result.stderr.index("error:"):].strip()
  assert "No checkpoint" in error and str(tmp_path) in error
  assert "\n\n" not in error and len(error.splitlines()) == 1, error
  assert not os.path.exists(tmp_path / "samples")


def test_autoguidance_guides_with_an_earlier_checkpoint_of_the_run(tmp_path):
  workdir = str(tmp_path / "run")
  config = sample_config()
  config.train.num_steps = 4
  train(config, workdir)
  config.sample.guidance, config.sample.guide_step = "autoguidance", 2
  exp = Experiment(config, workdir)
  params, step = exp.load_params()
  early, early_step = exp.load_params(step=2)
  assert (step, early_step) == (4, 2)
  assert_trees_equal(exp.guide_params(), early)
  tokens, mask = exp.tokenizer.tokenize_batch(["7", "3"], config.model.text_ctx)

  def draw(sampler, scale):
    return np.asarray(sampler(tokens, mask, np.full(2, scale, np.float32), jax.random.key(5)))

  # DDIM (η = 0): the variance output, always the model's, plays no part, so s = 0 is the guide alone.
  spec = exp.sampler_spec.replace(sampler="ddim", respacing="5")
  auto = exp.sampler(params, spec)  # Bound to the guide by the Experiment.
  alone = exp.sampler(params, spec.replace(guidance="none"))
  guide_alone = exp.sampler(early, spec.replace(guidance="none"))
  np.testing.assert_allclose(draw(auto, 1.0), draw(alone, 1.0), atol=1e-5)
  np.testing.assert_allclose(draw(auto, 0.0), draw(guide_alone, 1.0), atol=1e-5)
  assert np.abs(draw(auto, 3.0) - draw(alone, 1.0)).max() > 1e-3
  # Through main.py, and a step the run did not keep.
  auto_flags = ["--mode=sample", "--config.sample.guidance=autoguidance", "--config.sample.prompts=7",
                "--config.sample.respacing=10"]
  result = run_main(workdir, *auto_flags, "--config.sample.guide_step=2", "--config.sample.guidance_scales=(2.,)")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(checkpoint step 4, EMA parameters, guided by checkpoint 2 of this run)." in result.stdout, result.stdout
  result = run_main(workdir, *auto_flags, "--config.sample.guide_step=3")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "config.sample.guide_step = 3:" in result.stderr and "it keeps [2, 4]" in result.stderr, result.stderr


def test_autoguidance_by_another_run_of_a_smaller_model(sampled, tmp_path):
  """sample.guide_workdir may hold a smaller model (its own saved config) of the same text, images and
  diffusion: the sampler is built with the guide's network and bound to its parameters. A guide that reads
  other tokens is refused, naming the field."""
  workdir, _ = sampled
  small = sample_config()
  small.model.model_channels, small.model.num_groups, small.model.num_head_channels = 16, 8, 16
  guide_exp = Experiment(small, str(tmp_path / "guide"))
  guide_params = jax.jit(lambda rng: init_params(guide_exp.model, rng))(jax.random.key(3))
  guide_exp.write_params(guide_params)
  config = sample_config()
  config.sample.guidance, config.sample.guide_workdir = "autoguidance", str(tmp_path / "guide")
  exp = Experiment(config, workdir)
  sampler = exp.sampler(exp.load_params()[0])
  assert sampler.guide_model.config.model_channels == 16 and sampler.model.config.model_channels == 32
  assert_trees_equal(sampler.params["guide"], guide_params)
  # A guide of the same model config shares the model's network (and the compiled program of any such guide).
  config.sample.guide_workdir = workdir
  assert Experiment(config, workdir).sampler().guide_model is None
  other = sample_config()
  other.model.text_ctx = 12
  Experiment(other, str(tmp_path / "other")).write_params(
      jax.jit(lambda rng: init_params(Experiment(other).model, rng))(jax.random.key(4)))
  config.sample.guide_workdir = str(tmp_path / "other")
  with pytest.raises(UserError, match=r"cannot guide this model: model.text_ctx = 12 there, 8 here\. A guide must"):
    Experiment(config, workdir).sampler()
  noisier = sample_config()
  noisier.diffusion.snr_scale = 0.25  # Another diffusion: the guide's ε would be of other noise levels.
  Experiment(noisier, str(tmp_path / "noisier")).write_params(exp.load_params()[0])
  config.sample.guide_workdir = str(tmp_path / "noisier")
  with pytest.raises(UserError, match=r"cannot guide this model: diffusion.snr_scale = 0.25 there, 1.0 here\."):
    Experiment(config, workdir).sampler()


def test_clip_guided_sampling_reads_a_clip_run(sampled, tiny_clip_run, tmp_path):
  """sample.guidance=clip binds the CLIP run of sample.clip_workdir (its EMA parameters) and packs each prompt's
  CLIP tokens beside the model's; scale 0 is the conditional model alone. A workdir without a CLIP, or a CLIP
  of other images or noise, is refused naming what differs."""
  workdir, _ = sampled
  _, clip_workdir = tiny_clip_run
  config = sample_config()
  config.sample.guidance, config.sample.clip_workdir = "clip", clip_workdir
  exp = Experiment(config, workdir)
  params = exp.load_params()[0]
  sampler = exp.sampler(params)
  clip = ClipExperiment.from_workdir(clip_workdir)
  assert sampler.clip_config == clip.clip_config
  noisier = config.copy_and_resolve_references()
  noisier.diffusion.snr_scale = 0.25
  with pytest.raises(UserError, match="other images or noise than this model's: SNR scale 1.0 there, 0.25 here"):
    _ = Experiment(noisier, workdir).clip_experiment
  assert_trees_equal(sampler.params["clip"], clip.load_params()[0])
  grid = exp.sample_grid(sampler, ["7", "3"], [0.0, 30.0], 1, jax.random.key(0))
  # The sample grids of training use their own spec (classifier-free): no CLIP tokens in their rows.
  cfg = exp.sampler(params, SamplerSpec(respacing="4"))
  assert exp.sample_grid(cfg, ["7"], [2.0], 1, jax.random.key(0)).shape == (1, 1, 1, 16, 16, 1)
  config.sample.guidance, config.sample.clip_workdir = "none", ""
  plain = Experiment(config, workdir)
  alone = plain.sample_grid(plain.sampler(params), ["7", "3"], [1.0, 1.0], 1, jax.random.key(0))  # Same noise.
  assert np.abs(grid[:, 0].astype(int) - alone[:, 0].astype(int)).max() <= 1  # (uint8 rounding)
  assert np.abs(grid[:, 1].astype(int) - alone[:, 1].astype(int)).max() > 10
  config.sample.guidance, config.sample.clip_workdir = "clip", workdir
  with pytest.raises(UserError, match=r"holds no noised CLIP \(no clip_checkpoints/ in it\)"):
    Experiment(config, workdir).sampler()
  golden = os.path.join(os.path.dirname(REPO), "shared", "reference", "clip_goldens", "clip.npz")
  if os.path.isfile(golden):  # A 16 px RGB CLIP of 1000 timesteps.
    convert_run(None, str(tmp_path / "rgb_clip"), "clip", golden)
    config.sample.clip_workdir = str(tmp_path / "rgb_clip")
    with pytest.raises(UserError, match="other images or noise than this model's: channels 3 there, 1 here; "
                                        "diffusion timesteps 1000 there, 100 here"):
      Experiment(config, workdir).sampler()
  # Through main.py (in a copy: the fixture's samples stay as the other tests read them): what it used is said.
  copy = shutil.copytree(workdir, str(tmp_path / "copy"))
  result = run_main(copy, "--mode=sample", "--config.sample.guidance=clip",
                    f"--config.sample.clip_workdir={clip_workdir}", "--config.sample.prompts=7",
                    "--config.sample.guidance_scales=(10.,)", "--config.sample.num_per_prompt=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f", CLIP-guided by {clip_workdir})." in result.stdout, result.stdout
