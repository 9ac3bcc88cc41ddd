"""One reverse step of each sampler against a float64 transcription of its paper's update (DDPM Alg. 2 with
Improved DDPM's learned-range variance; DDIM eq. 12), at an interior step and at t = 0 (no noise); the
multistep DPM-Solver++(2M) as a whole loop against its Alg. 2, and its order on Gaussian data, whose
probability-flow ODE has a closed-form solution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.diffusion import GaussianDiffusion, ddim_step, p_sample_step, respace, sample_loop, space_timesteps

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


# ---------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) on data x_0 ~ N(0, DATA_STD² I), with the exact ε-prediction E[ε | x_t] as the "network".
DATA_STD = 0.5


def respaced(steps):
  return respace(GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000), space_timesteps(1000, str(steps)))


def exact_model_fn(diffusion):
  """E[ε | x_t] = σ_t x_t / (α_t² s² + σ_t²) for x_t = α_t x_0 + σ_t ε; the variance channels are unused."""
  abar = jnp.asarray(diffusion.alphas_cumprod, jnp.float32)

  def fn(x, t):
    a = abar[t].reshape(-1, 1, 1, 1)
    eps = jnp.sqrt(1 - a) * x / (a * DATA_STD ** 2 + 1 - a)
    return jnp.concatenate([eps, jnp.zeros_like(x)], axis=-1)
  return fn


def dpm_solver_pp_2m_reference(diffusion, x_T):
  """Lu et al. 2022, Alg. 2 (DPM-Solver++(2M)) in float64 over the respaced steps t_0 = K−1 > … > 0 and then
  ᾱ = 1, with the data prediction clipped to [−1, 1]; the last two steps first order (σ = 0 at the end)."""
  abar = np.append(np.asarray(diffusion.alphas_cumprod, np.float64)[::-1], 1.0)  # Noisiest first, then clean.
  alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  x, previous = np.asarray(x_T, np.float64), None
  for i in range(len(abar) - 1):
    eps = sigma[i] * x / (abar[i] * DATA_STD ** 2 + 1 - abar[i])
    x0 = np.clip((x - sigma[i] * eps) / alpha[i], -1, 1)
    h = lam[i + 1] - lam[i]
    if previous is None or i >= len(abar) - 3:
      d = x0
    else:
      r = (lam[i] - lam[i - 1]) / h
      d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous
    x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * d
    previous = x0
  return x


def test_dpm_solver_pp_2m_loop_follows_algorithm_2():
  diffusion = respaced(10)
  x_T = jax.random.normal(jax.random.key(3), (2, 4, 4, 3))
  got = sample_loop(exact_model_fn(diffusion), diffusion, x_T, jax.random.key(0), sampler="dpm_solver_pp_2m")
  # float32 loses digits in x̂_0 = (x − σ ε)/α at the first step (ᾱ = 2e-9); a wrong weight moves x by 1e-2.
  np.testing.assert_allclose(np.asarray(got), dpm_solver_pp_2m_reference(diffusion, x_T), rtol=1e-3, atol=5e-4)


def test_dpm_solver_pp_2m_converges_at_second_order_where_ddim_is_first():
  """On Gaussian data the probability-flow ODE keeps x_t / √(α_t² s² + σ_t²) constant, so the exact sample is
  x_T · s / √(ᾱ_T s² + 1 − ᾱ_T). Doubling the steps divides DDIM's error by about 2, DPM-Solver++(2M)'s by
  about 4, and the latter is already far closer at the same number of network calls."""
  x_T = jax.random.normal(jax.random.key(4), (4, 8, 8, 1)) * 0.5  # Small: x̂_0 is never clipped.
  errors = {}
  for sampler in ("ddim", "dpm_solver_pp_2m"):
    for steps in (8, 16, 32):
      diffusion = respaced(steps)
      abar_T = float(diffusion.alphas_cumprod[-1])
      exact = np.asarray(x_T, np.float64) * DATA_STD / np.sqrt(abar_T * DATA_STD ** 2 + 1 - abar_T)
      got = sample_loop(exact_model_fn(diffusion), diffusion, x_T, jax.random.key(0), sampler=sampler)
      errors[sampler, steps] = float(np.max(np.abs(np.asarray(got, np.float64) - exact)))
  assert 0 < errors["dpm_solver_pp_2m", 16] < errors["ddim", 16] / 5
  for steps in (8, 16):
    assert 1.6 < errors["ddim", steps] / errors["ddim", 2 * steps] < 2.5
    assert errors["dpm_solver_pp_2m", steps] / errors["dpm_solver_pp_2m", 2 * steps] > 3.0
