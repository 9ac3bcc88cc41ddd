"""glide-text2im state dicts through the converter: the reference goldens' random-weight base and
base-inpaint models give the reference outputs (../shared/reference/glide_goldens), and bad dicts are
reported by key."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from glide_jax.errors import UserError
from glide_jax.model import ModelConfig, Text2ImUNet, get_tokenizer, init_params
from glide_jax.released.keymap import convert_state_dict, flax_path, match_keys
from glide_jax.released.options import RELEASED_MODELS, apply_glide_options, channel_mult_of, released_options
from helpers.paths import REPO

GOLDENS = os.path.join(os.path.dirname(REPO), "shared", "reference", "glide_goldens")
pytestmark = pytest.mark.skipif(not os.path.isdir(GOLDENS), reason="the reference goldens are not beside the checkout")


def golden(kind):
  with np.load(os.path.join(GOLDENS, f"{kind}.npz")) as f:
    data = {k: f[k] for k in f.files}
  options = json.loads(str(data["options_json"]))
  state_dict = {k[len("state_dict/"):]: v for k, v in data.items() if k.startswith("state_dict/")}
  return options, state_dict, data


def model_for(options):
  config = tiny.get_config()
  apply_glide_options(config, options)
  model = Text2ImUNet(ModelConfig.from_config(config, get_tokenizer("gpt2").vocab_size, on="cpu"))
  return model, jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))


def nhwc(a):
  return jnp.asarray(a).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("kind", ["base", "base-inpaint", "upsample", "upsample-inpaint"])
def test_converted_reference_models_compute_the_reference_outputs(kind):
  options, state_dict, data = golden(kind)
  model, shapes = model_for(options)
  params = convert_state_dict(state_dict, shapes)
  assert len(jax.tree_util.tree_leaves(params)) == len(state_dict)
  extra_inputs = {}
  if options["inpaint"]:
    extra_inputs = dict(inpaint_image=nhwc(data["in/inpaint_image"]), inpaint_mask=nhwc(data["in/inpaint_mask"]))
  if options["super_res"]:
    extra_inputs["low_res"] = nhwc(data["in/low_res"])
  out = model.apply({"params": params}, nhwc(data["in/x"]), jnp.asarray(data["in/t"]), jnp.asarray(data["in/tokens"]),
                    jnp.asarray(data["in/mask"]), **extra_inputs)
  assert_close_to_scale(out, nhwc(data["out/model_output"]))
  xf_out, xf_proj = model.apply({"params": params}, jnp.asarray(data["in/tokens"]), jnp.asarray(data["in/mask"]),
                                method=Text2ImUNet.encode_text)
  assert_close_to_scale(xf_proj, data["out/xf_proj"])
  assert_close_to_scale(xf_out, data["out/xf_out"].transpose(0, 2, 1))


def assert_close_to_scale(actual, expected, tolerance=1e-4):
  """max |actual − expected| ≤ tolerance · max |expected|: the error relative to the output's scale."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  error = float(np.max(np.abs(actual - expected))) / float(np.max(np.abs(expected)))
  assert error <= tolerance, f"max error {error:.2e} of the output's scale"


@pytest.mark.parametrize("kind", RELEASED_MODELS)
def test_the_key_map_covers_every_released_checkpoint_exactly(kind):
  with open(os.path.join(GOLDENS, "released_checkpoint_shapes.json")) as f:
    released = json.load(f)[kind]
  options = released["options"]
  assert {k: options[k] for k in released_options(kind)} == released_options(kind)
  model, shapes = model_for(options)
  paths = match_keys({k: tuple(v) for k, v in released["shapes"].items()}, shapes)
  assert len(paths) == len(released["shapes"]) == len(jax.tree_util.tree_leaves(shapes))
  assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes)) == released["num_params"]
  assert model.config.low_res_size == (64 if kind.startswith("upsample") else 0)
  assert model.config.channel_mult == ((1, 1, 2, 2, 4, 4) if kind.startswith("upsample") else (1, 2, 3, 4))


def test_released_options_and_their_defaults():
  assert released_options("upsample-inpaint")["inpaint"] and released_options("upsample")["super_res"]
  assert channel_mult_of({"channel_mult": "1,2", "image_size": 16}) == (1, 2)
  with pytest.raises(UserError, match="Unknown GLIDE model 'large'; choose one of base, upsample"):
    released_options("large")
  with pytest.raises(UserError, match="no default channel_mult for 32 px"):
    channel_mult_of({"channel_mult": "", "image_size": 32})


def test_names_and_layouts():
  assert flax_path("input_blocks.3.1.qkv.weight") == ("unet", "input_blocks_3_1", "qkv", "kernel")
  assert flax_path("output_blocks.1.0.in_layers.0.weight") == ("unet", "output_blocks_1_0", "in_norm", "norm", "scale")
  assert flax_path("out.0.bias") == ("unet", "out_norm", "norm", "bias")
  assert flax_path("transformer.resblocks.1.mlp.c_proj.weight") == ("text_encoder", "resblocks_1", "c_proj", "kernel")
  assert flax_path("transformer.resblocks.0.ln_2.weight") == ("text_encoder", "resblocks_0", "ln_2", "scale")
  assert flax_path("token_embedding.weight") == ("text_encoder", "token_embedding", "embedding")


def test_a_bad_state_dict_is_reported_by_key():
  options, state_dict, _ = golden("base")
  _, shapes = model_for(options)
  with pytest.raises(UserError, match=r"'unknown\.weight' is not part of a GLIDE text-to-image model"):
    convert_state_dict({**state_dict, "unknown.weight": np.zeros(3)}, shapes)
  wrong = dict(state_dict)
  wrong["out.2.weight"] = np.zeros((6, 16, 3, 3), np.float32)
  with pytest.raises(UserError, match=r"'out\.2\.weight' has shape \(6, 16, 3, 3\).*parameter is \(3, 3, 32, 6\)"):
    convert_state_dict(wrong, shapes)
  missing = {k: v for k, v in state_dict.items() if k != "padding_embedding"}
  with pytest.raises(UserError, match=r"lacks 1 of this model's parameters, e\.g\. "
                                      r"\['text_encoder/padding_embedding'\]"):
    convert_state_dict(missing, shapes)
