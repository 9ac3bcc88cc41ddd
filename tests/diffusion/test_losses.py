"""KL, discretized likelihood, VB terms and the hybrid loss (GLIDE_REFERENCE.md §3 "Hybrid loss").

The hybrid loss is compared with an independent float64 numpy transcription of improved-diffusion's
`_vb_terms_bpd` / `training_losses` (LEARNED_RANGE variance, EPSILON mean, RESCALED_MSE loss).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from glide_jax.diffusion import (
  GaussianDiffusion,
  approx_standard_normal_cdf,
  discretized_gaussian_log_likelihood,
  hybrid_loss,
  min_snr_weight,
  normal_kl,
  vb_terms_bpd,
)

SHAPE = (8, 4, 4, 3)  # NHWC; model outputs are [..., 6].


# --- an independent float64 transcription of improved-diffusion ------------------------------------
class RefDiffusion:
  """improved-diffusion's GaussianDiffusion, LEARNED_RANGE + EPSILON + RESCALED_MSE, in numpy float64 (NHWC)."""

  def __init__(self, betas):
    self.betas = np.asarray(betas, np.float64)
    self.num_timesteps = len(betas)
    alphas = 1.0 - self.betas
    self.alphas_cumprod = np.cumprod(alphas)
    self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
    self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
    self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
    self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
    self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

  @staticmethod
  def _extract(arr, t, shape):
    res = arr[t]
    return res.reshape(res.shape + (1,) * (len(shape) - 1))

  def q_posterior_mean_variance(self, x_start, x_t, t):
    mean = (self._extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
    return mean, self._extract(self.posterior_variance, t, x_t.shape), self._extract(
        self.posterior_log_variance_clipped, t, x_t.shape)

  def p_mean_variance(self, model_output, x, t, clip_denoised):
    c = x.shape[-1]
    model_output, model_var_values = model_output[..., :c], model_output[..., c:]
    min_log = self._extract(self.posterior_log_variance_clipped, t, x.shape)
    max_log = self._extract(np.log(self.betas), t, x.shape)
    frac = (model_var_values + 1) / 2
    model_log_variance = frac * max_log + (1 - frac) * min_log
    pred_xstart = (self._extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
                   - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * model_output)
    if clip_denoised:
      pred_xstart = np.clip(pred_xstart, -1, 1)
    model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {"mean": model_mean, "log_variance": model_log_variance, "pred_xstart": pred_xstart}

  def vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised):
    true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
    kl = ref_normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
    kl = kl.mean(axis=(1, 2, 3)) / np.log(2.0)
    decoder_nll = -ref_discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
    decoder_nll = decoder_nll.mean(axis=(1, 2, 3)) / np.log(2.0)
    return np.where(t == 0, decoder_nll, kl)

  def training_losses(self, model_output, x_start, x_t, t, noise):
    c = x_t.shape[-1]
    eps = model_output[..., :c]
    vb = self.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=False) * (self.num_timesteps / 1000.0)
    mse = ((noise - eps) ** 2).mean(axis=(1, 2, 3))
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def ref_normal_kl(mean1, logvar1, mean2, logvar2):
  return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * np.exp(-logvar2))


def ref_approx_standard_normal_cdf(x):
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * np.power(x, 3))))


def ref_discretized_gaussian_log_likelihood(x, means, log_scales):
  centered_x = x - means
  inv_stdv = np.exp(-log_scales)
  cdf_plus = ref_approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
  cdf_min = ref_approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
  log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  return np.where(x < -0.999, log_cdf_plus,
                  np.where(x > 0.999, log_one_minus_cdf_min, np.log(np.maximum(cdf_delta, 1e-12))))


# --- helpers ---------------------------------------------------------------------------------------
def quantised_images(rng, shape):
  """Data on the 256-level grid x = -1 + 2k/255, with the edge levels present."""
  k = rng.integers(0, 256, shape)
  k.reshape(-1)[:4] = [0, 255, 0, 255]
  return (-1.0 + 2.0 * k / 255.0).astype(np.float32)


def loss_inputs(diffusion, seed, t):
  rng = np.random.default_rng(seed)
  x0 = quantised_images(rng, SHAPE)
  noise = rng.normal(size=SHAPE).astype(np.float32)
  # A plausible network output: ε̂ near the true noise, v anywhere in [-1, 1] (and a little beyond).
  eps_hat = (noise + 0.3 * rng.normal(size=SHAPE)).astype(np.float32)
  v = rng.uniform(-1.2, 1.2, SHAPE).astype(np.float32)
  out = np.concatenate([eps_hat, v], axis=-1)
  t = np.asarray(t, np.int32)
  x_t = np.asarray(diffusion.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))
  return x0, x_t, t, noise, out


# --- normal_kl -------------------------------------------------------------------------------------
def test_kl_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(0)
  mean = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  logvar = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  np.testing.assert_allclose(np.asarray(normal_kl(mean, logvar, mean, logvar)), 0.0, atol=1e-7)


def test_kl_known_value():
  # KL(N(0, 1) ‖ N(1, 4)) = log 2 + (1 + 1)/8 − 1/2.
  kl = normal_kl(jnp.float32(0.0), jnp.float32(0.0), jnp.float32(1.0), jnp.float32(math.log(4.0)))
  assert float(kl) == pytest.approx(math.log(2.0) + 0.25 - 0.5, rel=1e-6)
  # And the textbook closed form on random values: log(σ2/σ1) + (σ1² + (μ1 − μ2)²)/(2σ2²) − ½.
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=(2, 10))
  s1, s2 = rng.uniform(0.2, 3.0, size=(2, 10))
  expected = np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
  got = normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, 2 * np.log(s1), m2, 2 * np.log(s2))))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
  assert np.all(expected > 1e-3)


# --- the discretized Gaussian likelihood ----------------------------------------------------------
def test_approx_cdf_is_close_to_the_normal_cdf():
  x = np.linspace(-6, 6, 1201)
  got = np.asarray(approx_standard_normal_cdf(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, ndtr(x), atol=2e-4)
  np.testing.assert_allclose(got, ref_approx_standard_normal_cdf(x), atol=1e-6)
  np.testing.assert_allclose(got + got[::-1], 1.0, atol=1e-6)  # Φ(−x) = 1 − Φ(x).


@pytest.mark.parametrize("mean,log_scale", [
    (0.0, math.log(0.5)), (0.3, math.log(0.02)), (-0.99, math.log(0.1)), (1.0, math.log(0.003)),
    (-2.5, math.log(1.0)), (0.7, math.log(3.0)), (0.0, math.log(1e-4)),
])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
  x = (-1.0 + 2.0 * np.arange(256) / 255.0).astype(np.float32)
  log_probs = np.asarray(discretized_gaussian_log_likelihood(
      jnp.asarray(x), jnp.full((256,), mean, jnp.float32), jnp.full((256,), log_scale, jnp.float32)))
  assert np.all(log_probs <= 1e-6)
  assert np.exp(log_probs.astype(np.float64)).sum() == pytest.approx(1.0, abs=2e-5)


def test_discretized_likelihood_bins_and_tails():
  x = jnp.asarray([-1.0, 0.0, 1.0], jnp.float32)
  means = jnp.asarray([-0.5, 0.1, 0.5], jnp.float32)
  log_scales = jnp.asarray([math.log(0.3), math.log(0.2), math.log(0.4)], jnp.float32)
  got = np.asarray(discretized_gaussian_log_likelihood(x, means, log_scales))
  cdf = ref_approx_standard_normal_cdf
  expected = [
      np.log(cdf((-1.0 + 0.5 + 1 / 255) / 0.3)),                               # Left tail: Φ(upper edge).
      np.log(cdf((0.0 - 0.1 + 1 / 255) / 0.2) - cdf((0.0 - 0.1 - 1 / 255) / 0.2)),  # The bin x ± 1/255.
      np.log(1 - cdf((1.0 - 0.5 - 1 / 255) / 0.4)),                            # Right tail: 1 − Φ(lower edge).
  ]
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # A middle bin under a wide Gaussian holds ≈ pdf · 2/255.
  assert math.exp(got[1]) == pytest.approx(2 / 255 * math.exp(-0.5 * (0.1 / 0.2) ** 2) / (0.2 * math.sqrt(2 * math.pi)),
                                           rel=2e-3)


def test_discretized_likelihood_is_clamped_at_1e_minus_12():
  got = discretized_gaussian_log_likelihood(jnp.float32(0.0), jnp.float32(0.9), jnp.float32(math.log(1e-3)))
  assert float(got) == pytest.approx(math.log(1e-12), rel=1e-6)


# --- VB terms --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cosine1000():
  return GaussianDiffusion.from_schedule("squaredcos_cap_v2", 1000)


@pytest.fixture(scope="module")
def linear100():
  return GaussianDiffusion.from_schedule("linear", 100)


def test_vb_at_t0_is_the_decoder_nll_not_the_kl(cosine1000):
  d = cosine1000
  x0, x_t, t, noise, out = loss_inputs(d, 0, [0] * SHAPE[0])
  vb = np.asarray(vb_terms_bpd(d, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t)))
  p = d.p_mean_variance(jnp.asarray(out), jnp.asarray(x_t), jnp.asarray(t), clip_denoised=False)
  ll = discretized_gaussian_log_likelihood(jnp.asarray(x0), p["mean"], 0.5 * p["log_variance"])
  nll_bits = -np.asarray(ll).mean(axis=(1, 2, 3)) / math.log(2.0)
  np.testing.assert_allclose(vb, nll_bits, rtol=1e-6)
  true_mean, _, true_logvar = d.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
  kl = normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])
  kl_bits = np.asarray(kl).mean(axis=(1, 2, 3)) / math.log(2)
  assert np.all(np.abs(vb - kl_bits) > 1e-2 * np.abs(vb))
  # And the same rows at t = 1 are the KL.
  t1 = np.ones_like(t)
  vb1 = np.asarray(vb_terms_bpd(d, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t1)))
  p1 = d.p_mean_variance(jnp.asarray(out), jnp.asarray(x_t), jnp.asarray(t1), clip_denoised=False)
  m1, _, lv1 = d.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t1))
  kl1 = np.asarray(normal_kl(m1, lv1, p1["mean"], p1["log_variance"])).mean(axis=(1, 2, 3)) / math.log(2)
  np.testing.assert_allclose(vb1, kl1, rtol=1e-6)


@pytest.mark.parametrize("which", ["cosine1000", "linear100"])
def test_hybrid_loss_is_mse_plus_rescaled_vb(which, request):
  d = request.getfixturevalue(which)
  T = d.num_timesteps
  x0, x_t, t, noise, out = loss_inputs(d, 1, [0, 1, 5, T // 4, T // 2, 3 * T // 4, T - 2, T - 1])
  terms = hybrid_loss(d, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(noise))
  terms = {k: np.asarray(v) for k, v in terms.items()}
  assert all(v.shape == (SHAPE[0],) for v in terms.values())
  raw_vb = np.asarray(vb_terms_bpd(d, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t)))
  np.testing.assert_allclose(terms["vb"], raw_vb * T / 1000.0, rtol=1e-6)
  mse = ((noise - out[..., :3]) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(terms["mse"], mse, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["vb"], rtol=1e-6)
  if T != 1000:
    assert not np.allclose(terms["vb"], raw_vb)


@pytest.mark.parametrize("schedule,T", [("squaredcos_cap_v2", 1000), ("linear", 1000), ("linear", 100),
                                        ("squaredcos_cap_v2", 50)])
def test_hybrid_loss_matches_improved_diffusion(schedule, T):
  d = GaussianDiffusion.from_schedule(schedule, T)
  ref = RefDiffusion(d.betas)
  rng = np.random.default_rng(T)
  # t = 0 (decoder NLL), t = 1, random interior steps and the last steps.
  t = np.concatenate([[0, 0, 1, T - 1, T - 2], rng.integers(0, T, SHAPE[0] * 2 - 5)]).astype(np.int32)
  shape = (len(t),) + SHAPE[1:]
  x0 = quantised_images(rng, shape)
  noise = rng.normal(size=shape).astype(np.float32)
  eps_hat = (noise + 0.3 * rng.normal(size=shape)).astype(np.float32)
  v = rng.uniform(-1.2, 1.2, shape).astype(np.float32)
  out = np.concatenate([eps_hat, v], axis=-1)
  x_t = np.asarray(d.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))

  got = hybrid_loss(d, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(noise))
  expected = ref.training_losses(out.astype(np.float64), x0.astype(np.float64), x_t.astype(np.float64), t,
                                 noise.astype(np.float64))
  for key in ("mse", "vb", "loss"):
    np.testing.assert_allclose(np.asarray(got[key]), expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
  assert np.all(expected["vb"] > 0)


def test_vb_gradient_trains_only_v(cosine1000):
  """stop_gradient(ε̂) in the VB term: d vb / d ε̂ is exactly 0, d vb / d v is not, and d mse / d v = 0."""
  d = cosine1000
  x0, x_t, t, noise, out = loss_inputs(d, 2, [0, 1, 10, 100, 400, 700, 998, 999])
  args = (jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(noise))

  def term(name):
    return jax.grad(lambda o: hybrid_loss(d, o, *args)[name].sum())(jnp.asarray(out))

  g_vb, g_mse, g_loss = (np.asarray(term(k)) for k in ("vb", "mse", "loss"))
  assert np.all(g_vb[..., :3] == 0.0)
  assert np.all(np.abs(g_vb[..., 3:]).reshape(len(t), -1).max(axis=1) > 0)  # Every example trains its v.
  assert np.all(g_mse[..., 3:] == 0.0)
  np.testing.assert_allclose(g_mse[..., :3], -2 * (noise - out[..., :3]) / np.prod(SHAPE[1:]), rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(g_loss[..., :3], g_mse[..., :3])
  np.testing.assert_allclose(g_loss[..., 3:], g_vb[..., 3:], rtol=1e-6)
  # Without the stop-gradient the VB term would move ε̂: the mean of p depends on it.
  g_raw = np.asarray(jax.grad(lambda o: vb_terms_bpd(d, o, *args[:3]).sum())(jnp.asarray(out)))
  assert np.abs(g_raw[..., :3]).max() > 0


def test_min_snr_weight_is_min_snr_gamma_over_snr(cosine1000):
  """min(SNR, γ)/SNR with SNR = ᾱ/(1 − ᾱ), from the float64 table: 1 on the noisy steps, γ/SNR below 1 on the
  clean ones; γ = 0 is off."""
  d = cosine1000
  t = np.arange(d.num_timesteps)
  snr = d.alphas_cumprod / (1.0 - d.alphas_cumprod)
  got = np.asarray(min_snr_weight(d, jnp.asarray(t), 5.0))
  np.testing.assert_allclose(got, np.minimum(snr, 5.0) / snr, rtol=1e-6)
  noisy = snr <= 5.0
  assert noisy[-1] and not noisy[0] and 0 < noisy.sum() < len(t)  # The cosine schedule crosses SNR = 5.
  np.testing.assert_array_equal(got[noisy], 1.0)
  assert got[0] < 1e-3 and np.all(np.diff(got[~noisy]) > 0)  # Damped most where the image is nearly clean.
  np.testing.assert_array_equal(np.asarray(min_snr_weight(d, jnp.asarray(t), 0.0)), np.ones(len(t)))


def test_min_snr_weight_scales_only_the_mse_in_the_loss(cosine1000):
  d = cosine1000
  x0, x_t, t, noise, out = loss_inputs(d, 3, [0, 1, 10, 100, 400, 700, 998, 999])
  args = (jnp.asarray(out), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(noise))
  plain = {k: np.asarray(v) for k, v in hybrid_loss(d, *args).items()}
  weight = np.asarray(min_snr_weight(d, jnp.asarray(t), 5.0))
  weighted = {k: np.asarray(v) for k, v in hybrid_loss(d, *args, mse_weight=jnp.asarray(weight)).items()}
  np.testing.assert_array_equal(weighted["mse"], plain["mse"])  # Reported unweighted.
  np.testing.assert_array_equal(weighted["vb"], plain["vb"])
  np.testing.assert_allclose(weighted["loss"], weight * plain["mse"] + plain["vb"], rtol=1e-6)
  assert weighted["loss"][0] < plain["loss"][0]
