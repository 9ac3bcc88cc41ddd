"""The released models' configs sample as glide-text2im's notebooks do."""

import pytest

from glide_jax.config import validate_config
from glide_jax.released.options import glide_config


@pytest.mark.parametrize("model,sampler,respacing,temperature", [
    ("base", "ddpm", "100", None),                 # text2im.ipynb and inpaint.ipynb: p_sample_loop, 100 steps.
    ("base-inpaint", "ddpm", "100", None),
    ("upsample", "ddim", "fast27", 0.997),         # text2im.ipynb: ddim_sample_loop, noise * 0.997.
    ("upsample-inpaint", "ddpm", "fast27", 0.997),  # inpaint.ipynb: p_sample_loop, noise * 0.997.
])
def test_each_released_model_samples_with_its_notebooks_loop(model, sampler, respacing, temperature):
  config = glide_config(model)
  validate_config(config)
  s = config.sample
  assert (s.sampler, s.respacing) == (sampler, respacing)
  if temperature is not None:
    assert s.upsample_temp == temperature and s.ddim_eta == 0.0
