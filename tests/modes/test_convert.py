"""python -m glide_jax.convert: a glide-text2im checkpoint file → a workdir that sampling uses; bad files
and workdirs are refused with exit 2, writing nothing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from glide_jax.editing.inputs import resize_bicubic
from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from glide_jax.modes import convert as convert_mode
from glide_jax.modes.convert import config_for, convert_checkpoint
from glide_jax.modes.edit import run as edit_and_save
from glide_jax.modes.sample import run as sample_and_save
from glide_jax.modes.sample import upsample
from glide_jax.modes.train import run as train
from glide_jax.released.keymap import convert_state_dict
from glide_jax.released.state_dict_file import read_state_dict
from helpers.paths import REPO
from helpers.runs import main_server
from helpers.torch_files import write_pt_calling

GOLDEN_BASE = os.path.join(os.path.dirname(REPO), "shared", "reference", "glide_goldens", "base.npz")
needs_goldens = pytest.mark.skipif(not os.path.isfile(GOLDEN_BASE), reason="the reference goldens are not beside "
                                                                          "the checkout")


def convert(*args):
  """`python -m glide_jax.convert ARGS` (a forked child of the main.py server)."""
  return main_server().run(args, module="glide_jax.convert")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("glide") / "base")
  result = convert("--model=base", f"--checkpoint={GOLDEN_BASE}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert result.stderr == "" and len(result.stdout.splitlines()) == 2  # No library notices: what it did, and next.
  return workdir, result.stdout


@needs_goldens
def test_the_converted_workdir_holds_the_reference_model(converted):
  workdir, stdout = converted
  assert "parameters) into" in stdout and "--mode=sample" in stdout
  config = config_for("base", read_state_dict(GOLDEN_BASE)[1])
  exp = Experiment(config, workdir)
  params, step = exp.load_params(use_ema=True)
  raw, _ = exp.load_params(use_ema=False)
  assert step == 0
  expected = convert_state_dict(read_state_dict(GOLDEN_BASE)[0], exp.abstract_params)
  for got, want, also in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected),
                             jax.tree_util.tree_leaves(raw)):
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(also, want)
  with np.load(GOLDEN_BASE) as f:
    nhwc = lambda a: jnp.asarray(a).transpose(0, 2, 3, 1)  # noqa: E731
    out = exp.model.apply({"params": params}, nhwc(f["in/x"]), jnp.asarray(f["in/t"]), jnp.asarray(f["in/tokens"]),
                          jnp.asarray(f["in/mask"]))
    np.testing.assert_allclose(out, nhwc(f["out/model_output"]), atol=1e-4 * np.abs(f["out/model_output"]).max())


@needs_goldens
def test_sampling_uses_the_converted_workdir(converted):
  workdir, _ = converted
  config = config_for("base", read_state_dict(GOLDEN_BASE)[1])
  config.sample.prompts = "an oil painting of a corgi"
  config.sample.respacing = "2"
  config.sample.guidance_scales = (3.0,)
  with np.load(sample_and_save(config, workdir)["npz"]) as f:
    assert f["images"].shape == (1, 16, 16, 3) and f["prompts"].tolist() == ["an oil painting of a corgi"]
    assert int(f["step"]) == 0


@needs_goldens
def test_a_converted_model_fine_tunes_on_a_caption_folder_with_init_from(converted, tmp_path, monkeypatch, capsys):
  """README, "Fine-tune a released model on your captions": the converted workdir stays as it was, the new run
  starts from its parameters, trains on 20 captioned photos (GPT-2 tokens) and samples a new caption."""
  monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
  base_workdir, _ = converted
  folder = tmp_path / "photos"
  folder.mkdir()
  rng = np.random.default_rng(0)
  colours = ("red", "green", "blue", "yellow")
  with open(folder / "captions.jsonl", "w", encoding="utf-8") as f:
    for i in range(20):
      Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
      f.write(json.dumps({"file": f"{i}.png", "caption": [f"a {colours[i % 4]} square", "a photo"]}) + "\n")
  config = config_for("base", read_state_dict(GOLDEN_BASE)[1])
  config.data.source, config.data.folder = "folder", str(folder)
  config.train.init_from = base_workdir
  config.train.batch_size, config.train.num_steps, config.train.checkpoint_every = 4, 2, 2
  workdir = str(tmp_path / "fine-tuned")
  state = train(config, workdir)
  assert f"Starting from the EMA parameters of {os.path.abspath(base_workdir)} (step 0)." in capsys.readouterr().out
  base_params, _ = Experiment(config, base_workdir).load_params()
  tuned, step = Experiment(config, workdir).load_params(use_ema=False)
  assert step == 2 and int(state.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(base_params)):
    # Two Adam steps at learning rate 2e-4 move each weight by at most about 4e-4: every tensor trained, from
    # the converted weights (a fresh initialisation would be far off).
    assert 0 < np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-3
  assert sorted(os.listdir(os.path.join(base_workdir, "checkpoints"))) == ["0"]
  config.sample.prompts, config.sample.respacing, config.sample.guidance_scales = "a purple square", "2", (3.0,)
  with np.load(sample_and_save(config, workdir)["npz"]) as f:
    assert f["images"].shape == (1, 16, 16, 3) and int(f["step"]) == 2


@needs_goldens
def test_a_converted_inpainting_model_edits_a_png(tmp_path):
  checkpoint = GOLDEN_BASE.replace("base.npz", "base-inpaint.npz")
  state_dict, options = read_state_dict(checkpoint)
  config = config_for("base-inpaint", options)
  assert config.model.inpaint and config.data.name == ""
  workdir = str(tmp_path / "inpaint")
  assert convert_checkpoint(config, state_dict, workdir) > 0
  photo = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  Image.fromarray(photo).save(tmp_path / "photo.png")
  config.edit.images, config.edit.mask = str(tmp_path / "photo.png"), "bottom"
  config.edit.prompts, config.edit.guidance_scales = "a corgi", (5.0,)
  config.sample.respacing = "2"
  with np.load(edit_and_save(config, workdir)["npz"]) as f:
    edits = f["edits"]
  assert edits.shape == (1, 1, 1, 16, 16, 3)
  np.testing.assert_array_equal(edits[0, 0, 0, :8], photo[:8])  # The kept top half, exactly.
  assert not np.array_equal(edits[0, 0, 0, 8:], photo[8:])


@needs_goldens
def test_the_converted_upsample_inpaint_model_enlarges_an_edit_keeping_the_known_pixels(tmp_path):
  """inpaint.ipynb's second stage on the converted golden (4 -> 16 px): the low-res edit, the full-size image
  and the mask as inputs, DDPM as the notebook; the known half comes back exactly."""
  state_dict, options = read_state_dict(GOLDEN_BASE.replace("base.npz", "upsample-inpaint.npz"))
  config = config_for("upsample-inpaint", options)
  assert config.model.inpaint and config.model.low_res_size == 4 and config.sample.sampler == "ddpm"
  workdir = str(tmp_path / "upsample-inpaint")
  assert convert_checkpoint(config, state_dict, workdir) > 0
  config.sample.respacing = "2"
  exp = Experiment(config, workdir)
  params, _ = exp.load_params()
  photo = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
  known = np.ones((1, 16, 16, 1), np.float32)
  known[:, 8:] = 0
  enlarged = upsample(exp, params, resize_bicubic(photo, 4), ["a corgi"], jax.random.key(0), images=photo,
                      known=known)
  assert enlarged.shape == (1, 16, 16, 3)
  np.testing.assert_array_equal(enlarged[:, :8], photo[:, :8])
  assert not np.array_equal(enlarged[:, 8:], photo[:, 8:])


@needs_goldens
def test_an_existing_workdir_is_not_overwritten(converted):
  workdir, _ = converted
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  result = convert("--model=base", f"--checkpoint={GOLDEN_BASE}", f"--workdir={workdir}")
  assert result.returncode == 2 and "already holds checkpoints" in result.stderr and "Traceback" not in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_is_written(tmp_path):
  marker, evil, workdir = tmp_path / "ran", str(tmp_path / "base.pt"), tmp_path / "out"
  write_pt_calling(evil, "os", "system", f"touch {marker}")
  result = convert("--model=base", f"--checkpoint={evil}", f"--workdir={workdir}")
  assert result.returncode == 2 and result.stderr.startswith("error: Refused") and "os.system" in result.stderr
  assert "Traceback" not in result.stderr
  assert not marker.exists() and not workdir.exists()


@needs_goldens
def test_a_checkpoint_of_another_model_names_the_key(tmp_path):
  small = {k: v for k, v in read_state_dict(GOLDEN_BASE)[0].items()}
  plain = str(tmp_path / "small.npz")
  np.savez(plain, **small)  # No options: taken as the released full-size base model, which it is not.
  result = convert("--model=base", f"--checkpoint={plain}", f"--workdir={tmp_path / 'out'}")
  assert result.returncode == 2 and "error: State-dict key" in result.stderr and "has shape" in result.stderr
  assert "check the config's model options against the checkpoint's" in result.stderr


@needs_goldens
@pytest.mark.parametrize("golden,model,held", [("base", "upsample", "base"), ("base-inpaint", "base", "base-inpaint"),
                                               ("upsample", "upsample-inpaint", "upsample")])
@pytest.mark.parametrize("recorded", [True, False], ids=["options", "first_layer"])
def test_a_file_of_another_model_than_model_is_refused_and_nothing_is_written(tmp_path, golden, model, held,
                                                                             recorded):
  """The file decides what it holds (its recorded options, else its first layer's input channels); a --model
  that disagrees is an error naming both, rather than a model converted under the wrong name."""
  path = GOLDEN_BASE.replace("base.npz", f"{golden}.npz")
  if not recorded:
    state_dict, _ = read_state_dict(path)
    path = str(tmp_path / "plain.npz")
    np.savez(path, **state_dict)
  why = "the model options it records say so" if recorded else "its first layer takes"
  with pytest.raises(UserError, match=rf"holds GLIDE's '{held}' model \({why}.*not --model={model}; give "
                                      rf"--model={held} \(nothing was written\)"):
    convert_mode.run(None, str(tmp_path / "out"), model=model, checkpoint=path)
  assert not (tmp_path / "out").exists()
