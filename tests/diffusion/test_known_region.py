"""Editing through the guided sampler on a tiny model: an inpainting model that starts from a base model's
weights computes what the base computes; the known region of every edit is the input's exactly; a mask that
keeps nothing gives ordinary guided sampling, for both the inpainting model and the replacement method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from glide_jax.data import to_model_range
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.editing import masks
from glide_jax.errors import UserError
from glide_jax.model import ModelConfig, Text2ImUNet, get_tokenizer, init_params
from glide_jax.sampling.guided import GuidedSampler, SamplerSpec
from glide_jax.sampling.images import to_uint8
from glide_jax.train.init_from import new_input_channels, transfer_params

PROMPTS = ["7", "three", "", "1"]
B = len(PROMPTS)


def build(inpaint):
  config = tiny.get_config()
  config.model.inpaint = inpaint
  tokenizer = get_tokenizer(config.model.tokenizer)
  return config, tokenizer, Text2ImUNet(ModelConfig.from_config(config, tokenizer.vocab_size))


@pytest.fixture(scope="module")
def models():
  config, tokenizer, base_model = build(False)
  _, _, inpaint_model = build(True)
  params = jax.jit(lambda rng: init_params(base_model, rng))(jax.random.key(0))
  noise = np.random.default_rng(1)  # Perturbed: the zero-initialised output layers would hide everything.
  base_params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(np.asarray(a) + 0.02 * noise.standard_normal(a.shape).astype(np.float32)), params)
  shapes = jax.eval_shape(lambda rng: init_params(inpaint_model, rng), jax.random.key(0))
  inpaint_params = transfer_params(base_params, shapes)
  diffusion = GaussianDiffusion.from_schedule(config.diffusion.noise_schedule, config.diffusion.num_timesteps)
  tokens, mask = tokenizer.tokenize_batch(PROMPTS, config.model.text_ctx)
  rng = np.random.default_rng(2)
  images_uint8 = rng.integers(0, 256, (B, 16, 16, 1), dtype=np.uint8)
  return dict(config=config, base_model=base_model, inpaint_model=inpaint_model, base_params=base_params,
              inpaint_params=inpaint_params, diffusion=diffusion, tokens=tokens, mask=mask,
              images_uint8=images_uint8, images=to_model_range(images_uint8), pad_id=tokenizer.pad_id)


def test_transfer_adds_zero_weights_for_the_new_input_channels(models):
  base, new = models["base_params"], models["inpaint_params"]
  assert new_input_channels(base, new) == 2  # C = 1: the known image times the mask, and the mask.
  kernel = np.asarray(new["unet"]["input_blocks_0"]["kernel"])
  assert kernel.shape[2] == 3
  np.testing.assert_array_equal(kernel[:, :, :1], base["unet"]["input_blocks_0"]["kernel"])
  assert not kernel[:, :, 1:].any()


def test_the_zero_initialised_inpainting_model_computes_what_the_base_model_computes(models):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(B, 16, 16, 1)), jnp.float32)
  t = jnp.asarray([0, 17, 50, 99])
  known = jnp.asarray(rng.integers(0, 2, (B, 16, 16, 1)), jnp.float32)
  base_out = models["base_model"].apply({"params": models["base_params"]}, x, t, models["tokens"], models["mask"])
  for image, mask in ((models["images"], known), (None, None), (models["images"], jnp.ones_like(known))):
    out = models["inpaint_model"].apply({"params": models["inpaint_params"]}, x, t, models["tokens"],
                                        models["mask"], inpaint_image=image, inpaint_mask=mask)
    np.testing.assert_allclose(out, base_out, atol=2e-5, rtol=1e-5)
  assert float(jnp.abs(base_out).max()) > 0.05  # The outputs are not trivially zero.


def test_transfer_names_a_tensor_that_does_not_fit(models):
  shapes = jax.eval_shape(lambda rng: init_params(models["inpaint_model"], rng), jax.random.key(0))
  bad = jax.tree_util.tree_map(lambda a: a, models["base_params"])
  bad["unet"]["out_conv"]["kernel"] = jnp.zeros((3, 3, 32, 4))
  with pytest.raises(UserError, match=r"unet/out_conv/kernel has shape \(3, 3, 32, 4\) in the base run"):
    transfer_params(bad, shapes)
  del bad["unet"]["out_conv"]
  with pytest.raises(UserError, match=r"only here: unet/out_conv/bias, unet/out_conv/kernel"):
    transfer_params(bad, shapes)


def sampler_for(models, inpaint):
  model = models["inpaint_model"] if inpaint else models["base_model"]
  params = models["inpaint_params"] if inpaint else models["base_params"]
  return GuidedSampler(model, models["diffusion"], SamplerSpec(respacing="5"), pad_id=models["pad_id"]).bind(params)


@pytest.mark.parametrize("inpaint", [True, False], ids=["inpainting_model", "replacement_method"])
def test_edits_keep_the_known_region_exactly_and_an_empty_mask_is_ordinary_sampling(models, inpaint):
  sampler = sampler_for(models, inpaint)
  scales = np.array([0.0, 1.0, 3.0, 7.0], np.float32)
  args = (models["tokens"], models["mask"], scales, jax.random.key(5))
  known = np.stack([masks.named_mask(m, 16) for m in ("bottom", "top", "box:2,3,9,12", "left")])
  edited = np.asarray(sampler(*args, image=models["images"], known=known))
  assert np.all(np.isfinite(edited))
  keep = np.broadcast_to(known > 0.5, edited.shape)
  np.testing.assert_array_equal(to_uint8(edited)[keep], models["images_uint8"][keep])
  assert np.any(to_uint8(edited)[~keep] != models["images_uint8"][~keep])
  plain = np.asarray(sampler(*args))
  nothing_known = np.asarray(sampler(*args, image=models["images"], known=np.zeros_like(known)))
  np.testing.assert_array_equal(nothing_known, plain)


def test_the_two_methods_differ_and_editing_needs_image_and_mask(models):
  scales = np.full((B,), 2.0, np.float32)
  known = np.stack([masks.named_mask("bottom", 16)] * B)
  a = sampler_for(models, True)(models["tokens"], models["mask"], scales,
                                jax.random.key(1), image=models["images"], known=known)
  b = sampler_for(models, False)(models["tokens"], models["mask"], scales,
                                 jax.random.key(1), image=models["images"], known=known)
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match="both the image and the known-pixel mask"):
    sampler_for(models, True)(models["tokens"], models["mask"], scales,
                              jax.random.key(1), image=models["images"])
