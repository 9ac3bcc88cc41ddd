"""GLIDE's noised CLIP against the reference: the goldens' random-weight encoders (../shared/reference/
clip_goldens), converted by the key map, give the reference's raw outputs, probes, embeddings, loss and
guidance gradient; bad state dicts are reported by key; the released encoders' key tables map exactly."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.clip import keymap
from glide_jax.clip import model as clip_model
from glide_jax.clip.keymap import clip_param_shapes, convert_clip, convert_state_dict, flax_path, match_keys
from glide_jax.clip.model import (
    ClipConfig,
    ImageEncoder,
    TextEncoder,
    clip_guidance_grad,
    clip_loss,
    image_embeddings,
    text_embeddings,
)
from glide_jax.errors import ConfigError, UserError
from helpers.paths import REPO

GOLDENS = os.path.join(os.path.dirname(REPO), "shared", "reference", "clip_goldens")
pytestmark = pytest.mark.skipif(not os.path.isdir(GOLDENS), reason="the reference goldens are not beside the checkout")
# Max abs error allowed against the goldens (outputs are O(1)). The goldens agree with a float64 reimplementation
# to ~1e-6; a tanh-approximate GELU is off by ~3e-4, so this must stay well below that.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(GOLDENS, "clip.npz"), allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  config = ClipConfig.from_reference(json.loads(str(data["options_json"]))["config"])
  state_dicts = {enc: {k[len(f"state_dict/{enc}/"):]: v for k, v in data.items() if k.startswith(f"state_dict/{enc}/")}
                 for enc in keymap.ENCODERS}
  return config, state_dicts, data


@pytest.fixture(scope="module")
def params(golden):
  config, state_dicts, _ = golden
  return convert_clip(config, state_dicts["image_enc"], state_dicts["text_enc"])


def inputs(data):
  """The goldens' inputs, images NCHW → NHWC."""
  return (jnp.asarray(data["in/x"].transpose(0, 2, 3, 1)), jnp.asarray(data["in/t"]), jnp.asarray(data["in/tokens"]),
          jnp.asarray(data["in/text_len"]))


@functools.partial(jax.jit, static_argnums=0)
def everything(config, params, x, t, tokens, text_len):
  """Every golden quantity in one program (one compilation for the file)."""
  image, text = ImageEncoder(config), TextEncoder(config)
  text_emb = text_embeddings(config, params, tokens, text_len)
  return {
      "image_enc": image.apply({"params": params["image_enc"]}, x, t),
      "image_probe": image.apply({"params": params["image_enc"]}, x, t, return_probe_features=True),
      "text_enc": text.apply({"params": params["text_enc"]}, tokens, text_len),
      "text_probe": text.apply({"params": params["text_enc"]}, tokens, text_len, return_probe_features=True),
      "image_emb": image_embeddings(config, params, x, t),
      "text_emb": text_emb,
      "clip_loss": clip_loss(config, params, x, t, text_emb),
      "cond_fn_grad": clip_guidance_grad(config, params, x, t, text_emb, grad_scale=1.0),
  }


@pytest.fixture(scope="module")
def outputs(golden, params):
  config, _, data = golden
  return jax.device_get(everything(config, params, *inputs(data)))


def max_error(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  return float(np.max(np.abs(actual - expected)))


def test_the_tolerance_is_far_below_the_tanh_gelu_error():
  assert TOLERANCE <= 1e-4 / 10


@pytest.mark.parametrize("name", ["image_enc", "image_probe", "text_enc", "text_probe"])
def test_raw_outputs_and_probe_features_match_the_reference(golden, outputs, name):
  assert max_error(outputs[name], golden[2][f"out/{name}"]) <= TOLERANCE


@pytest.mark.parametrize("name", ["image_emb", "text_emb"])
def test_normalised_embeddings_match_the_reference(golden, outputs, name):
  assert max_error(outputs[name], golden[2][f"out/{name}"]) <= TOLERANCE
  np.testing.assert_allclose(np.linalg.norm(outputs[name], axis=-1), 1.0, atol=1e-6)


def test_clip_loss_matches_the_reference(golden, outputs):
  expected = golden[2]["out/clip_loss"]
  assert max_error(outputs["clip_loss"], expected) <= TOLERANCE * abs(float(expected))  # ~20: relative


def test_guidance_gradient_matches_cond_fn(golden, outputs):
  assert max_error(outputs["cond_fn_grad"], golden[2]["out/cond_fn_grad"].transpose(0, 2, 3, 1)) <= TOLERANCE


def test_tokens_after_eot_change_nothing(golden, params, outputs):
  """Causal attention: the reference's padded tokens cannot reach EOT (reuses the compiled program)."""
  config, _, data = golden
  x, t, tokens, text_len = inputs(data)
  after_eot = np.arange(tokens.shape[1])[None] >= data["in/text_len"][:, None]
  garbage = np.where(after_eot, np.random.default_rng(1).integers(1, 49000, tokens.shape), data["in/tokens"])
  again = jax.device_get(everything(config, params, x, t, garbage, text_len))
  np.testing.assert_array_equal(again["text_enc"], outputs["text_enc"])


def test_a_tanh_gelu_would_fail_the_tolerance(golden, params, monkeypatch):
  config, _, data = golden
  monkeypatch.setattr(clip_model, "_gelu", lambda h: jax.nn.gelu(h, approximate=True))
  x, t, _, _ = inputs(data)
  approximate = jax.jit(lambda p: ImageEncoder(config).apply({"params": p}, x, t))(params["image_enc"])
  assert max_error(approximate, data["out/image_enc"]) > 10 * TOLERANCE


def test_bad_state_dicts_are_reported_by_key(golden):
  config, state_dicts, _ = golden
  image_sd, shapes = state_dicts["image_enc"], clip_param_shapes(config)["image_enc"]
  with pytest.raises(UserError, match=r"'blocks\.input\.nonsense' is not part of a glide-text2im noised CLIP"):
    convert_state_dict({**image_sd, "blocks.input.nonsense": np.zeros(3)}, shapes)
  with pytest.raises(UserError, match=r"'blocks\.block_0\.f_attn\.f_k\.b' \(as block_0/f_attn/f_k/bias\) has no place"):
    convert_state_dict({**image_sd, "blocks.block_0.f_attn.f_k.b": np.zeros(48)}, shapes)
  wrong = {**image_sd, "blocks.input.patch_proj": np.zeros((48, 3, 2, 2), np.float32)}
  with pytest.raises(UserError, match=r"'blocks\.input\.patch_proj' has shape \(48, 3, 2, 2\).*parameter is "
                                      r"\(4, 4, 3, 48\)"):
    convert_state_dict(wrong, shapes)
  missing = {k: v for k, v in image_sd.items() if k != "blocks.output.f.w"}
  with pytest.raises(UserError, match=r"lacks 1 of this encoder's parameters, e\.g\. \['output/f/kernel'\]"):
    convert_state_dict(missing, shapes)
  with pytest.raises(UserError, match=r"'blocks\.input\.w_voc' \(as input/w_voc\) has no place in the image encoder"):
    convert_clip(config, state_dicts["text_enc"], image_sd)  # The two checkpoints swapped.


def test_names_and_layouts():
  assert flax_path("blocks.input.patch_proj") == ("input", "patch_proj", "kernel")
  assert flax_path("blocks.block_11.f_attn.ln.g") == ("block_11", "f_attn", "ln", "scale")
  assert flax_path("blocks.block_3.f_mlp.f_2.b") == ("block_3", "f_mlp", "f_2", "bias")
  assert flax_path("blocks.output.f.w") == ("output", "f", "kernel")
  assert flax_path("blocks.input.w_t") == ("input", "w_t")
  conv = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # [out, in, h, w]
  assert keymap.to_flax_layout(("input", "patch_proj", "kernel"), conv)[3, 4, 2, 1] == conv[1, 2, 3, 4]
  affine = np.arange(6).reshape(2, 3)  # [out, in]
  assert keymap.to_flax_layout(("output", "f", "kernel"), affine)[2, 1] == affine[1, 2]


@pytest.fixture(scope="module")
def released():
  """The released encoders' key → shape tables and their config, and the shapes of this model's parameters."""
  with open(os.path.join(GOLDENS, "released_clip_shapes.json")) as f:
    table = json.load(f)
  return table, clip_param_shapes(ClipConfig.from_reference(table["config"]))


@pytest.mark.parametrize("encoder", keymap.ENCODERS)
def test_the_key_map_covers_the_released_encoders_exactly(released, encoder):
  released, shapes = released[0], released[1][encoder]
  table = {k: tuple(v) for k, v in released[encoder]["shapes"].items()}
  paths = match_keys(table, shapes)
  leaves = jax.tree_util.tree_leaves(shapes)
  assert len(paths) == len(table) == len(leaves)
  assert sum(int(np.prod(s.shape)) for s in leaves) == released[encoder]["num_params"]


def test_config_from_and_to_the_reference_dict(released):
  reference = released[0]["config"]
  config = ClipConfig.from_reference(reference)
  assert config == ClipConfig()  # The defaults are the released model.
  assert config.to_reference() == reference
  assert (config.image_width, config.text_width, config.image_tokens) == (768, 512, 257)
  with pytest.raises(ConfigError, match=r"unknown keys \['n_embed'\], missing keys \['n_embd'\]"):
    ClipConfig.from_reference({**{k: v for k, v in reference.items() if k != "n_embd"}, "n_embed": 512})
  with pytest.raises(ConfigError, match="image_size 64 is not a multiple of patch_size 5"):
    ClipConfig(patch_size=5)
  with pytest.raises(ConfigError, match="image_blocks = 0 is invalid"):
    ClipConfig(image_blocks=0)
