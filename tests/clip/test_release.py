"""--mode=convert --model=clip: the noised CLIP's encoder files → a CLIP run that CLIP guidance reads, with the
reference's weights (the goldens' random-weight pair); wrong or missing files are refused, writing nothing."""

import json
import os

import jax
import numpy as np
import pytest

from glide_jax.clip import keymap
from glide_jax.clip.experiment import ClipExperiment
from glide_jax.clip.model import ClipConfig
from glide_jax.clip.release import clip_run_config, read_clip_checkpoints
from glide_jax.errors import UserError
from glide_jax.modes.convert import convert_clip_run
from glide_jax.modes.convert import run as convert_run
from glide_jax.released.state_dict_file import read_state_dict
from helpers.paths import REPO

GOLDEN_CLIP = os.path.join(os.path.dirname(REPO), "shared", "reference", "clip_goldens", "clip.npz")
pytestmark = pytest.mark.skipif(not os.path.isfile(GOLDEN_CLIP), reason="the reference goldens are not beside the "
                                                                         "checkout")


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN_CLIP, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  config = ClipConfig.from_reference(json.loads(str(data["options_json"]))["config"])
  state_dicts = {enc: {k[len(f"state_dict/{enc}/"):]: v for k, v in data.items() if k.startswith(f"state_dict/{enc}/")}
                 for enc in keymap.ENCODERS}
  return config, state_dicts


def encoder_files(tmp_path, state_dicts):
  """The goldens' two encoders as two .npz state dicts (PyTorch names, no prefix), as the release's two files."""
  paths = {}
  for name, sd in state_dicts.items():
    paths[name] = str(tmp_path / f"{name}.npz")
    np.savez(paths[name], **sd)
  return paths


def test_the_goldens_convert_to_a_clip_run_with_the_reference_weights(tmp_path, golden, capsys):
  config, state_dicts = golden
  workdir = str(tmp_path / "clip")
  count = convert_run(None, workdir, "clip", GOLDEN_CLIP)
  assert count == sum(v.size for sd in state_dicts.values() for v in sd.values())
  assert "--config.sample.guidance=clip" in capsys.readouterr().out
  run = ClipExperiment.from_workdir(workdir)
  assert run.clip_config == config  # The sizes the file records, its images and its noise.
  params, step = run.load_params()
  assert step == 0
  expected = keymap.convert_clip(config, state_dicts["image_enc"], state_dicts["text_enc"])
  for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(UserError, match="already holds checkpoints"):  # A second conversion writes nothing.
    convert_run(None, workdir, "clip", GOLDEN_CLIP)


def test_two_encoder_files_in_either_order(tmp_path, golden):
  config, state_dicts = golden
  paths = encoder_files(tmp_path, state_dicts)
  for order in ([paths["image_enc"], paths["text_enc"]], [paths["text_enc"], paths["image_enc"]]):
    found_config, encoders = read_clip_checkpoints(order)
    assert found_config == ClipConfig()  # Plain state dicts record no config: the release's sizes.
    assert encoders.keys() == state_dicts.keys()
    for name in state_dicts:
      assert sorted(encoders[name]) == sorted(state_dicts[name])


def test_wrong_or_missing_encoders_are_refused_naming_the_fix(tmp_path, golden):
  _, state_dicts = golden
  paths = encoder_files(tmp_path, state_dicts)
  with pytest.raises(UserError, match="lacks the text encoder; give both files, comma-separated"):
    read_clip_checkpoints([paths["image_enc"]])
  with pytest.raises(UserError, match="names two image encoders"):
    read_clip_checkpoints([paths["image_enc"], paths["image_enc"]])
  other = str(tmp_path / "unet.npz")
  np.savez(other, **{"input_blocks.0.0.weight": np.zeros((4, 3, 3, 3), np.float32)})
  with pytest.raises(UserError, match="is not one of glide-text2im's noised CLIP encoders"):
    read_clip_checkpoints([other, paths["text_enc"]])
  # The release's sizes (no recorded config) do not fit the goldens' small tensors: refused by key and shape.
  workdir = str(tmp_path / "clip")
  with pytest.raises(UserError, match=r"has shape .* but the image encoder's parameter is"):
    convert_clip_run(workdir, [paths["image_enc"], paths["text_enc"]])
  assert not os.path.exists(os.path.join(workdir, "clip_checkpoints"))


def test_the_release_config_is_a_valid_run_config():
  config = clip_run_config(ClipConfig())
  assert (config.data.image_size, config.data.channels, config.diffusion.num_timesteps) == (64, 3, 1000)
  assert config.clip.n_vocab == 65536 and config.clip.max_text_len == 77 and config.clip.logit_scale == 100.0
  assert read_state_dict(GOLDEN_CLIP)[1] is not None  # The goldens record their config (the test above uses it).
