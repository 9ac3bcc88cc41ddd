"""The text-conditional model (GLIDE_REFERENCE.md §1–2) built from configs/tiny.py: shapes, zero output at
init, the text-conditioning invariances, dropout, bfloat16, the GLIDE base parameter count and the README's
parameter table."""

import functools
import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from glide_jax.config import validate_config
from glide_jax.model import ModelConfig, Text2ImUNet, count_params, init_params
from glide_jax.model.tokenizer import ByteTokenizer, get_tokenizer
from helpers.paths import REPO

BATCH = 6


def perturbed(params, seed=0, scale=0.05):
  """Init params plus noise, so the zero-initialised output layers no longer hide the network."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: (np.asarray(a) + scale * rng.normal(size=a.shape)).astype(np.float32), params)


def random_params_like(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (0.1 * rng.normal(size=s.shape) + (1.0 if s.shape[-1:] == s.shape else 0.0)).astype(np.float32),
      shapes)


def tiny_config(**overrides):
  config = tiny.get_config()
  config.model.dropout = 0.1
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  validate_config(config)
  return config


def create_model(config):
  return Text2ImUNet(ModelConfig.from_config(config, ByteTokenizer.vocab_size))


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model = create_model(config)
  # An "rbg" key compiles the initialisers several times faster on CPU than threefry; the values don't matter here.
  params = jax.jit(functools.partial(init_params, model))(jax.random.key(0, impl="rbg"))
  apply = jax.jit(lambda p, x, t, tok, m: model.apply({"params": p}, x, t, tok, m))
  return config, model, params, apply


@pytest.fixture(scope="module")
def batch(setup):
  """Rows (same x_t and t): 0 "seven"; 1 "seven" with a padded id changed; 2 "seven" with a real token changed;
  3 the empty prompt; 4 the empty prompt with arbitrary ids; 5 "3"."""
  config = setup[0]
  ctx = config.model.text_ctx
  tokens, mask = ByteTokenizer().tokenize_batch(["seven", "seven", "sevem", "", "", "3"], ctx)
  tokens[1, 6] = ord("x")
  tokens[4] = np.arange(ctx) + 40
  assert not mask[1, 6] and not mask[4].any() and mask[0, :5].all()
  rng = np.random.default_rng(0)
  size, channels = config.data.image_size, config.data.channels
  x = np.repeat(rng.normal(size=(1, size, size, channels)).astype(np.float32), BATCH, axis=0)
  t = np.full((BATCH,), 37, np.int32)
  return x, t, tokens, mask


@pytest.fixture(scope="module")
def outputs(setup, batch):
  _, _, params, apply = setup
  return np.asarray(apply(perturbed(params), *batch))


def test_output_shape_and_exactly_zero_at_init(setup, batch):
  config, _, params, apply = setup
  rng = np.random.default_rng(1)
  x = rng.normal(size=batch[0].shape).astype(np.float32)
  t = rng.integers(0, 100, BATCH).astype(np.int32)
  tokens = rng.integers(0, 257, batch[2].shape).astype(np.int32)
  out = apply(params, x, t, tokens, batch[3])
  size = config.data.image_size
  assert out.shape == (BATCH, size, size, 2 * config.data.channels)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_zero_initialised_layers(setup):
  params = setup[2]
  unet = params["unet"]
  assert not np.any(np.asarray(unet["out_conv"]["kernel"]))
  resblocks = [v for v in unet.values() if "out_conv" in v]
  attention = [v for v in unet.values() if "proj_out" in v]
  assert len(resblocks) == 5 and len(attention) == 1  # 1 input, 2 middle, 2 output; the middle block's (tiny).
  for block in resblocks:
    assert not np.any(np.asarray(block["out_conv"]["kernel"]))
    assert np.any(np.asarray(block["in_conv"]["kernel"]))
  for block in attention:
    assert not np.any(np.asarray(block["proj_out"]["kernel"]))
    assert np.any(np.asarray(block["qkv"]["kernel"])) and np.any(np.asarray(block["encoder_kv"]["kernel"]))
  text = params["text_encoder"]
  assert np.any(np.asarray(text["padding_embedding"]))
  assert not np.allclose(np.asarray(text["padding_embedding"]), np.asarray(text["positional_embedding"]))


def test_perturbed_model_output_is_finite_and_not_zero(outputs):
  assert np.all(np.isfinite(outputs))
  assert np.abs(outputs).mean() > 1e-2
  assert not np.allclose(outputs[..., 0], outputs[..., 1])  # ε and v are different channels.


def test_padded_positions_ids_do_not_matter(outputs):
  np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-6)


def test_a_real_token_changes_the_output(outputs):
  assert np.abs(outputs[2] - outputs[0]).max() > 1e-3
  assert np.abs(outputs[5] - outputs[0]).max() > 1e-3


def test_empty_prompt_output_does_not_depend_on_ids(outputs):
  np.testing.assert_allclose(outputs[4], outputs[3], rtol=0, atol=1e-6)
  assert np.abs(outputs[3] - outputs[0]).max() > 1e-3  # Unconditional differs from conditional.


def test_empty_prompt_text_features_do_not_depend_on_ids(setup):
  config, model, params, _ = setup
  ctx = config.model.text_ctx
  tokens = np.stack([np.full(ctx, 256), np.arange(ctx), np.arange(ctx)[::-1] * 7]).astype(np.int32)
  mask = np.zeros((3, ctx), bool)
  xf_out, xf_proj = jax.jit(lambda p, tok, m: model.apply({"params": p}, tok, m, method=Text2ImUNet.encode_text))(
      perturbed(params), tokens, mask)
  xf_out, xf_proj = np.asarray(xf_out), np.asarray(xf_proj)
  assert xf_out.shape == (3, ctx, config.model.xf_width)
  assert xf_proj.shape == (3, 4 * config.model.model_channels)
  np.testing.assert_array_equal(xf_out[1], xf_out[0])
  np.testing.assert_array_equal(xf_out[2], xf_out[0])
  np.testing.assert_array_equal(xf_proj[2], xf_proj[0])


def test_dropout_only_in_training(setup, batch, outputs):
  _, model, params, apply = setup
  p = perturbed(params)
  train = jax.jit(lambda p, key, x, t, tok, m: model.apply({"params": p}, x, t, tok, m, train=True,
                                                           rngs={"dropout": key}))
  a = np.asarray(train(p, jax.random.key(1, impl="rbg"), *batch))
  a_again = np.asarray(train(p, jax.random.key(1, impl="rbg"), *batch))
  b = np.asarray(train(p, jax.random.key(2, impl="rbg"), *batch))
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(a - b).max() > 1e-3
  assert np.abs(a - outputs).max() > 1e-3
  # Evaluation (the default) is deterministic and needs no dropout key.
  np.testing.assert_array_equal(np.asarray(apply(p, *batch)), outputs)


def test_bfloat16_compute_with_float32_params(setup, batch, outputs):
  config = tiny_config(model__dtype="bfloat16")
  model = create_model(config)
  shapes = jax.eval_shape(functools.partial(init_params, model), jax.random.PRNGKey(0))
  f32_params = setup[2]
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(f32_params)
  assert all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(shapes))
  apply = lambda p, x, t, tok, m: model.apply({"params": p}, x, t, tok, m)  # noqa: E731
  # The torso's convolutions run in bfloat16; the final norm and conv in float32 (GLIDE casts back before `out`).
  traced = jax.jit(apply).trace(perturbed(f32_params), *batch)
  convs = [e for e in traced.jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  conv_dtypes = [e.invars[0].aval.dtype for e in convs]
  assert conv_dtypes.count(jnp.bfloat16) >= len(convs) - 2
  assert conv_dtypes[-1] == jnp.float32
  out = np.asarray(traced.lower().compile()(perturbed(f32_params), *batch))
  assert out.dtype == np.float32
  scale = np.abs(outputs).max()
  assert np.abs(out - outputs).max() <= 0.05 * scale
  assert np.abs(out - outputs).max() > 0  # It really computed in bfloat16.


def test_three_channel_model_shape():
  config = tiny_config(data__channels=3, data__image_size=32, model__channel_mult=(1, 2),
                       model__attention_resolutions=(16,), model__resblock_updown=True, model__conv_resample=True)
  model = create_model(config)
  assert model.config.in_channels == 3
  params = random_params_like(jax.eval_shape(functools.partial(init_params, model), jax.random.PRNGKey(0)))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  tokens, mask = ByteTokenizer().tokenize_batch(["red", ""], config.model.text_ctx)
  out = np.asarray(jax.jit(lambda p, *a: model.apply({"params": p}, *a))(params, x, np.array([0, 99]), tokens, mask))
  assert out.shape == (2, 32, 32, 6)
  assert np.all(np.isfinite(out)) and np.abs(out).mean() > 1e-3
  # Attention at 16 px: the second level of a 32 px model (and the middle), with down/up ResBlocks between.
  assert "qkv" in params["unet"]["input_blocks_3_1"] and "input_blocks_1_1" not in params["unet"]
  assert "in_conv" in params["unet"]["input_blocks_2_0"] and "in_conv" in params["unet"]["output_blocks_1_2"]


@pytest.mark.parametrize("inpaint", [False, True])
def test_an_upsampler_sees_x_then_the_low_res_image_upsampled_bilinearly(inpaint):
  config = tiny_config(model__low_res_size=2, model__inpaint=inpaint)
  model = create_model(config)
  assert model.config.super_res and model.config.unet_in_channels == (4 if inpaint else 2)
  x = np.full((1, 4, 4, 1), 0.5, np.float32)
  low_res = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32).reshape(1, 2, 2, 1)
  out = np.asarray(model.apply({"params": {}}, x, None, None, low_res, method=Text2ImUNet.unet_input))
  assert out.shape == (1, 4, 4, model.config.unet_in_channels)
  np.testing.assert_array_equal(out[..., 0], x[..., 0])
  # PyTorch's bilinear, align_corners=False, 2 → 4 px: sources at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
  ramp = np.array([0.0, 0.25, 0.75, 1.0])
  np.testing.assert_allclose(out[0, :, :, -1], 2 * ramp[:, None] + ramp[None, :], atol=1e-6)
  if inpaint:  # [x, image · mask, mask, upsampled]: nothing known without an image and mask.
    np.testing.assert_array_equal(out[..., 1:3], 0.0)
  params = jax.eval_shape(functools.partial(init_params, model), jax.random.PRNGKey(0))
  assert params["unet"]["input_blocks_0"]["kernel"].shape[2] == model.config.unet_in_channels
  with pytest.raises(ValueError, match="needs the low-resolution image"):
    model.apply({"params": {}}, x, method=Text2ImUNet.unet_input)


def test_model_config_reads_the_config(setup):
  config, model, params, _ = setup
  assert model.config.vocab_size == 257  # The byte tokenizer's ids 0..255 and pad 256.
  assert model.config.image_size == config.data.image_size and model.config.in_channels == config.data.channels
  assert model.config.channel_mult == tuple(config.model.channel_mult) and model.config.dtype == "float32"
  assert model.config.attention_ds == ()  # tiny: attention in the middle block only.
  at_16 = config.copy_and_resolve_references()
  at_16.model.attention_resolutions = (16,)
  assert ModelConfig.from_config(at_16, 257).attention_ds == (1,)  # 16x16 is its only level's downsampling 1.
  assert params["text_encoder"]["token_embedding"]["embedding"].shape == (257, config.model.xf_width)
  assert params["text_encoder"]["positional_embedding"].shape == (config.model.text_ctx, config.model.xf_width)
  assert params["unet"]["out_conv"]["kernel"].shape == (3, 3, config.model.model_channels, 2)
  assert params["text_encoder"]["transformer_proj"]["kernel"].shape == (config.model.xf_width,
                                                                         4 * config.model.model_channels)
  assert count_params(params) == sum(np.asarray(p).size for p in jax.tree_util.tree_leaves(params))


def test_glide_base_model_has_the_reference_parameter_count():
  """GLIDE's base model (GLIDE_REFERENCE.md §2 "Base model"): 385,030,726 parameters in 783 tensors."""
  model = Text2ImUNet(ModelConfig(
      image_size=64, in_channels=3, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
      attention_resolutions=(32, 16, 8), num_head_channels=64, num_groups=32, dropout=0.1, learn_sigma=True,
      resblock_updown=True, conv_resample=True, vocab_size=50257, text_ctx=128, xf_width=512, xf_layers=16,
      xf_heads=8))
  shapes = jax.eval_shape(functools.partial(init_params, model), jax.random.PRNGKey(0))
  assert count_params(shapes) == 385_030_726
  assert len(jax.tree_util.tree_leaves(shapes)) == 783
  unet = shapes["unet"]
  assert sum("encoder_kv" in v for v in unet.values()) == 22
  assert unet["output_blocks_3_0"]["in_conv"]["kernel"].shape == (3, 3, 1344, 768)
  assert unet["middle_block_1"]["encoder_kv"]["kernel"].shape == (512, 1536)
  assert unet["out_conv"]["kernel"].shape == (3, 3, 192, 6)


def test_the_gpt2_tokenizer_gives_the_model_glides_vocabulary():
  config = tiny_config(model__tokenizer="gpt2")
  model = Text2ImUNet(ModelConfig.from_config(config, get_tokenizer("gpt2").vocab_size))
  shapes = jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
  assert shapes["text_encoder"]["token_embedding"]["embedding"].shape == (50257, config.model.xf_width)


def _readme_parameter_table() -> dict[str, int]:
  """The README's config table: {config path: the parameter count its last column gives}."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    rows = re.findall(r"^\| `(configs/\w+\.py)` \|.*\| ([\d,]+) \|$", f.read(), re.M)
  return {path: int(count.replace(",", "")) for path, count in rows}


@pytest.mark.parametrize("path, expected", sorted(_readme_parameter_table().items()))
def test_the_readme_gives_each_configs_parameter_count(path, expected):
  config = importlib.import_module(path.removesuffix(".py").replace("/", ".")).get_config()
  model = Text2ImUNet(ModelConfig.from_config(config, get_tokenizer(config.model.tokenizer).vocab_size))
  assert count_params(jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))) == expected


def test_the_readme_parameter_table_lists_the_cpu_configs():
  assert {"configs/mnist_cpu.py", "configs/mnist_cpu_inpaint.py", "configs/tiny.py"} <= set(_readme_parameter_table())
