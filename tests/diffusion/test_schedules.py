"""Beta schedules (GLIDE_REFERENCE.md §3 "Schedules") against their closed forms, in float64."""

import math

import numpy as np
import pytest

from glide_jax.diffusion import GaussianDiffusion, get_named_beta_schedule
from glide_jax.errors import ConfigError


def cosine_alpha_bar(s):
  return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.mark.parametrize("num_timesteps", [1000, 100, 250, 4000])
def test_linear_endpoints_are_scaled_by_1000_over_T(num_timesteps):
  betas = get_named_beta_schedule("linear", num_timesteps)
  scale = 1000.0 / num_timesteps
  assert betas.dtype == np.float64
  assert betas.shape == (num_timesteps,)
  assert betas[0] == pytest.approx(1e-4 * scale, rel=1e-12)
  assert betas[-1] == pytest.approx(0.02 * scale, rel=1e-12)
  # Evenly spaced between the endpoints.
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) * scale / (num_timesteps - 1), rtol=1e-9)


def test_linear_at_1000_is_ddpm():
  betas = get_named_beta_schedule("linear", 1000)
  assert betas[0] == 1e-4
  assert betas[-1] == 0.02
  assert betas[500] == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999, rel=1e-12)


def test_cosine_reference_numbers():
  betas = get_named_beta_schedule("squaredcos_cap_v2", 1000)
  assert betas.dtype == np.float64
  assert betas[0] == pytest.approx(4.13e-5, rel=2e-3)
  assert betas[0] == pytest.approx(1 - cosine_alpha_bar(0.001) / cosine_alpha_bar(0.0), rel=1e-12)
  assert betas[999] == 0.999
  assert np.all(betas <= 0.999) and np.all(betas > 0)
  assert np.all(np.diff(betas) > 0)  # Increasing.


@pytest.mark.parametrize("num_timesteps", [1000, 100, 10])
def test_cosine_matches_the_closed_form(num_timesteps):
  betas = get_named_beta_schedule("squaredcos_cap_v2", num_timesteps)
  expected = np.array([min(1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps),
                           0.999) for i in range(num_timesteps)])
  np.testing.assert_allclose(betas, expected, rtol=1e-13)
  assert betas[-1] == 0.999
  # Where no beta is capped, ᾱ_t telescopes to ᾱ((t+1)/T) / ᾱ(0) (Improved DDPM eq. 17).
  abar = GaussianDiffusion.from_betas(betas).alphas_cumprod
  t = np.arange(num_timesteps - 1)
  closed = np.array([cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(0.0) for i in t])
  np.testing.assert_allclose(abar[t], closed, rtol=1e-9)


def test_cosine_alias():
  np.testing.assert_array_equal(get_named_beta_schedule("cosine", 50), get_named_beta_schedule("squaredcos_cap_v2", 50))


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("num_timesteps", [1000, 37])
def test_alphas_cumprod_is_the_product_formula(name, num_timesteps):
  diffusion = GaussianDiffusion.from_schedule(name, num_timesteps)
  betas = [float(b) for b in diffusion.betas]
  expected, running = [], 1.0
  for b in betas:
    running *= 1.0 - b
    expected.append(running)
  np.testing.assert_allclose(diffusion.alphas_cumprod, expected, rtol=1e-12)
  assert diffusion.alphas_cumprod.dtype == np.float64
  assert diffusion.alphas_cumprod_prev[0] == 1.0
  np.testing.assert_allclose(diffusion.alphas_cumprod_prev[1:], expected[:-1], rtol=1e-12)
  assert diffusion.num_timesteps == num_timesteps


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("snr_scale", [1 / 16, 0.25, 4.0])
def test_snr_scale_multiplies_the_snr_of_every_step(name, snr_scale):
  """SNR'(t) = k SNR(t) at every t (Chen 2023, Hoogeboom et al. 2023), with valid betas: ᾱ' still falls from
  below 1 towards 0, so sampling starts from noise as before."""
  plain = GaussianDiffusion.from_schedule(name, 1000)
  scaled = GaussianDiffusion.from_schedule(name, 1000, snr_scale)
  snr = lambda d: d.alphas_cumprod / (1.0 - d.alphas_cumprod)
  np.testing.assert_allclose(snr(scaled) / snr(plain), snr_scale, rtol=1e-9)
  assert np.all(scaled.betas > 0) and np.all(scaled.betas < 1) and np.all(np.diff(scaled.alphas_cumprod) < 0)
  assert (scaled.alphas_cumprod[-1] < plain.alphas_cumprod[-1]) == (snr_scale < 1)


def test_snr_scale_one_is_the_named_schedule_bit_for_bit():
  for name in ("linear", "squaredcos_cap_v2"):
    np.testing.assert_array_equal(get_named_beta_schedule(name, 100, 1.0), get_named_beta_schedule(name, 100))


def test_unknown_schedule_is_a_config_error_naming_the_field():
  with pytest.raises(ConfigError, match=r"'quadratic'.*config\.diffusion\.noise_schedule"):
    get_named_beta_schedule("quadratic", 1000)


@pytest.mark.parametrize("num_timesteps", [0, -3])
def test_non_positive_T_is_a_config_error(num_timesteps):
  with pytest.raises(ConfigError, match="num_timesteps"):
    get_named_beta_schedule("linear", num_timesteps)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.5], [[0.1, 0.2]], [-0.1]])
def test_from_betas_rejects_invalid_betas(betas):
  with pytest.raises(ValueError):
    GaussianDiffusion.from_betas(np.array(betas))
