"""One reverse step of each sampler against a float64 transcription of its paper's update (DDPM Alg. 2 with
Improved DDPM's learned-range variance; DDIM eq. 12), at an interior step and at t = 0 (no noise)."""

import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.diffusion import GaussianDiffusion, ddim_step, p_sample_step

SHAPE = (2, 4, 4, 3)  # NHWC; row 0 at step T_STEP, row 1 at t = 0.
T_STEP = 37


@pytest.fixture(scope="module")
def diffusion():
  return GaussianDiffusion.from_schedule("squaredcos_cap_v2", 50)


def step_inputs(seed=0):
  rng = np.random.default_rng(seed)
  x_t = rng.normal(size=SHAPE)
  output = np.concatenate([rng.normal(size=SHAPE), rng.uniform(-1, 1, SHAPE)], axis=-1)  # (ε, v)
  return x_t, output, rng.normal(size=SHAPE), np.array([T_STEP, 0])


def x_start64(diffusion, x_t, eps, t):
  """x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε, clipped to [−1, 1]; and (ᾱ_t, ᾱ_{t−1}, β_t) per row."""
  betas = np.asarray(diffusion.betas, np.float64)
  abar_all = np.cumprod(1.0 - betas)
  abar, abar_prev = abar_all[t], np.where(t > 0, abar_all[t - 1], 1.0)
  col = lambda a: a.reshape(-1, 1, 1, 1)  # noqa: E731
  x0 = np.clip(x_t / np.sqrt(col(abar)) - np.sqrt(1 / col(abar) - 1) * eps, -1, 1)
  return x0, col(abar), col(abar_prev), col(betas[t])


def test_a_ddpm_step_is_the_posterior_mean_plus_the_learned_range_noise(diffusion):
  x_t, output, z, t = step_inputs()
  eps, v = output[..., :3], output[..., 3:]
  x0, abar, abar_prev, beta = x_start64(diffusion, x_t, eps, t)
  mean = beta * np.sqrt(abar_prev) / (1 - abar) * x0 + (1 - abar_prev) * np.sqrt(1 - beta) / (1 - abar) * x_t
  betas = np.asarray(diffusion.betas, np.float64)
  abar_all = np.cumprod(1 - betas)
  posterior_var = betas * (1 - np.concatenate([[1.0], abar_all[:-1]])) / (1 - abar_all)  # β̃_t (DDPM eq. 7)
  min_log = np.log(np.append(posterior_var[1], posterior_var[1:]))[t].reshape(-1, 1, 1, 1)  # β̃_0 = 0: use β̃_1
  log_var = (v + 1) / 2 * np.log(beta) + (1 - (v + 1) / 2) * min_log
  expected = mean + (t != 0).reshape(-1, 1, 1, 1) * np.exp(0.5 * log_var) * z
  got = p_sample_step(diffusion, jnp.float32(output), jnp.float32(x_t), jnp.asarray(t), jnp.float32(z))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_a_ddim_step_follows_eq_12_with_eps_recomputed_from_the_clipped_x0(diffusion, eta):
  x_t, output, z, t = step_inputs(1)
  x0, abar, abar_prev, _ = x_start64(diffusion, x_t, output[..., :3], t)
  eps = (x_t / np.sqrt(abar) - x0) / np.sqrt(1 / abar - 1)
  sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
  expected = (np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev - sigma ** 2) * eps
              + (t != 0).reshape(-1, 1, 1, 1) * sigma * z)
  got = ddim_step(diffusion, jnp.float32(output), jnp.float32(x_t), jnp.asarray(t), jnp.float32(z), eta=eta)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
