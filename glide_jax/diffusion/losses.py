"""The hybrid training loss of Improved DDPM (improved-diffusion `training_losses`, LEARNED_RANGE + RESCALED_MSE).

loss = L_simple + (T/1000) · L_vb, where L_vb is computed with a stop-gradient on ε̂ so it trains only the
variance (Improved DDPM §3.1, eq. 16), in bits per dimension.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from glide_jax.diffusion.gaussian import GaussianDiffusion


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the approximation improved-diffusion uses."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
  """log p(x) of data in [−1, 1] quantised to 256 levels under N(means, e^{2 log_scales}) (DDPM §3.3).

  Each level owns the bin x ± 1/255; the edge levels take the tails. Probabilities are clamped at 1e-12.
  """
  centered_x = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(diffusion: GaussianDiffusion, model_output: jax.Array, x_start: jax.Array, x_t: jax.Array,
                 t: jax.Array, clip_denoised: bool = False) -> jax.Array:
  """L_t in bits/dim per example: KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for t > 0, and the decoder
  NLL −log p_θ(x_0|x_1) for t = 0 (Improved DDPM eqs. 4–6)."""
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
  out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
  kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
  decoder_nll = -discretized_gaussian_log_likelihood(
      x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
  decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
  return jnp.where(t == 0, decoder_nll, kl)


def signal_to_noise_ratio(diffusion: GaussianDiffusion, t: jax.Array) -> jax.Array:
  """SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, eq. 2 with α_t² = ᾱ_t), gathered as float32."""
  alphas_cumprod = diffusion.alphas_cumprod
  return jnp.asarray(alphas_cumprod / (1.0 - alphas_cumprod), jnp.float32)[t]


def min_snr_weight(diffusion: GaussianDiffusion, t: jax.Array, gamma: float) -> jax.Array:
  """Min-SNR-γ loss weight of an ε-prediction MSE: min(SNR(t), γ) / SNR(t) (Hang et al. 2023,
  arXiv:2303.09556: their x_0 weight min(SNR, γ) expressed for ε, as ‖ε − ε̂‖² = SNR(t) ‖x_0 − x̂_0‖²).

  1 where SNR(t) <= γ (the noisy steps), γ / SNR(t) < 1 on the nearly clean ones, whose easy, conflicting
  gradients it damps. γ = 0 means off: weight 1 everywhere.
  """
  if gamma == 0:
    return jnp.ones(jnp.shape(t), jnp.float32)
  snr = signal_to_noise_ratio(diffusion, t)
  return jnp.minimum(snr, gamma) / snr


def hybrid_loss(diffusion: GaussianDiffusion, model_output: jax.Array, x_start: jax.Array, x_t: jax.Array,
                t: jax.Array, noise: jax.Array, mse_weight: jax.Array | None = None) -> dict[str, jax.Array]:
  """L_hybrid = L_simple + (T/1000) L_vb per example (Improved DDPM eq. 16 with λ = 0.001 over T terms).

  `model_output` is [..., 2C] = (ε̂, v). The VB term sees stop_gradient(ε̂), so it trains only v.
  `mse_weight` [B] (e.g. `min_snr_weight`) scales each example's L_simple in the loss; the VB term stays as
  it is. Returns per-example "loss", "mse" (unweighted, comparable across weightings) and "vb".
  """
  channels = x_t.shape[-1]
  eps, v = model_output[..., :channels], model_output[..., channels:]
  frozen_out = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
  vb = vb_terms_bpd(diffusion, frozen_out, x_start, x_t, t, clip_denoised=False)
  vb = vb * (diffusion.num_timesteps / 1000.0)
  mse = mean_flat(jnp.square(noise - eps))
  weighted_mse = mse if mse_weight is None else mse * mse_weight
  return {"loss": weighted_mse + vb, "mse": mse, "vb": vb}
