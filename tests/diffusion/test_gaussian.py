"""GaussianDiffusion (GLIDE_REFERENCE.md §3): q, the posterior and p_θ against float64 closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.diffusion import GaussianDiffusion
from glide_jax.diffusion.gaussian import extract

SHAPE = (6, 4, 4, 3)  # NHWC


@pytest.fixture(scope="module", params=[("squaredcos_cap_v2", 1000), ("linear", 100)], ids=["cosine1000", "linear100"])
def diffusion(request):
  return GaussianDiffusion.from_schedule(*request.param)


def tables64(betas):
  """DDPM's tables, written out independently in float64."""
  betas = np.asarray(betas, np.float64)
  abar = np.array([np.prod(1.0 - betas[:i + 1]) for i in range(len(betas))])
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  return betas, abar, abar_prev


def random_inputs(diffusion, seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  xt = rng.normal(size=SHAPE).astype(np.float32)
  T = diffusion.num_timesteps
  t = np.array([0, 1, 2, T // 2, T - 2, T - 1], np.int32)
  return x0, xt, t


def test_extract_gathers_float32_and_broadcasts():
  table = np.array([0.5, 1.5, 2.5, 3.5], np.float64)
  out = extract(table, jnp.array([3, 0]), 4)
  assert out.shape == (2, 1, 1, 1)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out).ravel(), [3.5, 0.5])


def test_posterior_tables_are_ddpm_eq7(diffusion):
  betas, abar, abar_prev = tables64(diffusion.betas)
  np.testing.assert_allclose(diffusion.alphas_cumprod_prev, abar_prev, rtol=1e-12)
  tilde = betas * (1 - abar_prev) / (1 - abar)
  np.testing.assert_allclose(diffusion.posterior_variance, tilde, rtol=1e-12)
  assert diffusion.posterior_variance[0] == 0.0
  # The clipped log replaces log β̃_0 = -inf by log β̃_1.
  expected_log = np.log(np.concatenate([[tilde[1]], tilde[1:]]))
  np.testing.assert_allclose(diffusion.posterior_log_variance_clipped, expected_log, rtol=1e-12)
  assert np.all(np.isfinite(diffusion.posterior_log_variance_clipped))
  np.testing.assert_allclose(diffusion.posterior_mean_coef1, betas * np.sqrt(abar_prev) / (1 - abar), rtol=1e-12)
  np.testing.assert_allclose(diffusion.posterior_mean_coef2, (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
                             rtol=1e-12)


def test_q_sample_and_q_mean_variance(diffusion):
  x0, noise, t = random_inputs(diffusion)
  _, abar, _ = tables64(diffusion.betas)
  a = abar[t][:, None, None, None]
  xt = np.asarray(diffusion.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))
  np.testing.assert_allclose(xt, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)
  mean, var, logvar = diffusion.q_mean_variance(jnp.asarray(x0), jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(mean), np.sqrt(a) * x0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(var).ravel(), (1 - a).ravel(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(logvar).ravel(), np.log(1 - a).ravel(), rtol=1e-5)


def test_posterior_mean_variance_by_bayes_rule(diffusion):
  """μ̃ and β̃ of q(x_{t-1}|x_t, x_0), derived from q(x_{t-1}|x_0)·q(x_t|x_{t-1}) in float64 (DDPM eqs. 6–7)."""
  x0, xt, t = random_inputs(diffusion, seed=1)
  betas, abar, abar_prev = tables64(diffusion.betas)
  mean, var, logvar = diffusion.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t))
  mean, var, logvar = np.asarray(mean), np.asarray(var).reshape(-1), np.asarray(logvar).reshape(-1)
  assert mean.shape == SHAPE
  for i, ti in enumerate(t):
    if ti == 0:
      # q(x_{-1}|x_0, x_0) is a point mass at x_0: coef1 = 1, coef2 = 0, variance 0 (log clipped to β̃_1).
      np.testing.assert_allclose(mean[i], x0[i], rtol=1e-6, atol=1e-6)
      assert var[i] == 0.0
      continue
    b, a_prev = betas[ti], abar_prev[ti]
    # Product of N(x; √ᾱ_{t-1} x_0, 1-ᾱ_{t-1}) and N(x_t; √α_t x, β_t) as a Gaussian in x.
    precision = 1.0 / (1.0 - a_prev) + (1.0 - b) / b
    post_var = 1.0 / precision
    post_mean = post_var * (np.sqrt(a_prev) * x0[i].astype(np.float64) / (1.0 - a_prev)
                            + np.sqrt(1.0 - b) * xt[i].astype(np.float64) / b)
    np.testing.assert_allclose(mean[i], post_mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(var[i], post_var, rtol=1e-5)
    np.testing.assert_allclose(logvar[i], np.log(post_var), rtol=1e-5, atol=1e-6)


def test_predict_xstart_from_eps_inverts_q_sample(diffusion):
  x0, noise, t = random_inputs(diffusion, seed=2)
  _, abar, _ = tables64(diffusion.betas)
  xt = diffusion.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  back = np.asarray(diffusion.predict_xstart_from_eps(xt, jnp.asarray(t), jnp.asarray(noise)))
  # float32 cancellation grows like √(1/ᾱ_t): the tolerance follows it.
  tol = 1e-5 * np.sqrt(1.0 / abar[t])[:, None, None, None] + 1e-6
  assert np.all(np.abs(back - x0) <= tol)
  eps = np.asarray(diffusion.predict_eps_from_xstart(xt, jnp.asarray(t), jnp.asarray(x0)))
  ok = t < diffusion.num_timesteps - 1  # ε from x_0 is ill-conditioned only where ᾱ_t ≈ 1 (t = 0 at T=1000).
  np.testing.assert_allclose(eps[ok & (t > 0)], noise[ok & (t > 0)], rtol=1e-3, atol=1e-3)


def test_learned_range_endpoints(diffusion):
  T = diffusion.num_timesteps
  t = jnp.array([0, 1, T // 3, T - 1])
  betas, abar, abar_prev = tables64(diffusion.betas)
  tilde = betas * (1 - abar_prev) / (1 - abar)
  ones = jnp.ones((4, 2, 2, 3))
  upper = np.asarray(diffusion.learned_range_log_variance(ones, t))
  lower = np.asarray(diffusion.learned_range_log_variance(-ones, t))
  middle = np.asarray(diffusion.learned_range_log_variance(0 * ones, t))
  tt = np.asarray(t)
  np.testing.assert_allclose(upper[:, 0, 0, 0], np.log(betas[tt]), rtol=1e-6)
  expected_lower = np.log(tilde[np.maximum(tt, 1)])  # t = 0 uses β̃_1.
  np.testing.assert_allclose(lower[:, 0, 0, 0], expected_lower, rtol=1e-6)
  np.testing.assert_allclose(middle[:, 0, 0, 0], 0.5 * (np.log(betas[tt]) + expected_lower), rtol=1e-6)
  # Not clamped: v outside [-1, 1] extrapolates linearly.
  beyond = np.asarray(diffusion.learned_range_log_variance(3 * ones, t))
  np.testing.assert_allclose(beyond[:, 0, 0, 0], 2 * np.log(betas[tt]) - expected_lower, rtol=1e-5)


def test_p_mean_variance_splits_eps_and_v_and_clips(diffusion):
  rng = np.random.default_rng(3)
  x0, xt, t = random_inputs(diffusion, seed=3)
  eps = rng.normal(size=SHAPE).astype(np.float32)
  v = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  out_arr = jnp.asarray(np.concatenate([eps, v], axis=-1))
  betas, abar, abar_prev = tables64(diffusion.betas)
  a = abar[t][:, None, None, None]
  xstart = np.sqrt(1 / a) * xt - np.sqrt(1 / a - 1) * eps
  for clip in (False, True):
    out = diffusion.p_mean_variance(out_arr, jnp.asarray(xt), jnp.asarray(t), clip_denoised=clip)
    expected_x0 = np.clip(xstart, -1, 1) if clip else xstart
    err = np.abs(np.asarray(out["pred_xstart"]) - expected_x0)
    assert np.all(err <= 1e-5 * np.sqrt(1 / a) * (1 + np.abs(xt) + np.abs(eps)))
    if clip:
      assert np.abs(np.asarray(out["pred_xstart"])).max() <= 1.0
    c1 = (betas * np.sqrt(abar_prev) / (1 - abar))[t][:, None, None, None]
    c2 = ((1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar))[t][:, None, None, None]
    np.testing.assert_allclose(np.asarray(out["mean"]), c1 * np.asarray(out["pred_xstart"]) + c2 * xt,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["eps"]), eps)
    np.testing.assert_allclose(np.asarray(out["log_variance"]),
                               np.asarray(diffusion.learned_range_log_variance(jnp.asarray(v), jnp.asarray(t))))


def test_denoised_fn_applies_before_the_clip(diffusion):
  x0, xt, t = random_inputs(diffusion, seed=4)
  out_arr = jnp.zeros(SHAPE[:-1] + (6,))
  seen = []

  def denoised_fn(x):
    seen.append(x)
    return x * 0 + 5.0  # Outside [-1, 1]: only a clip after this brings it back.

  out = diffusion.p_mean_variance(out_arr, jnp.asarray(xt), jnp.asarray(t), clip_denoised=True,
                                  denoised_fn=denoised_fn)
  assert len(seen) == 1
  np.testing.assert_array_equal(np.asarray(out["pred_xstart"]), np.ones(SHAPE, np.float32))
  out = diffusion.p_mean_variance(out_arr, jnp.asarray(xt), jnp.asarray(t), clip_denoised=False,
                                  denoised_fn=denoised_fn)
  np.testing.assert_array_equal(np.asarray(out["pred_xstart"]), np.full(SHAPE, 5.0, np.float32))
