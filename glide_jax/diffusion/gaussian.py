"""The Gaussian diffusion process: q(x_t|x_0), the posterior q(x_{t-1}|x_t,x_0) and p(x_{t-1}|x_t).

Follows glide-text2im `gaussian_diffusion.py` / improved-diffusion: tables are computed once in float64
with numpy and gathered as float32. Images are NHWC; model outputs are [..., 2C] = (ε, v).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from glide_jax.diffusion.schedules import get_named_beta_schedule


def extract(table: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """Gathers table[t] as float32 and reshapes it to broadcast against a rank-`ndim` batch."""
  values = jnp.asarray(table, dtype=jnp.float32)[t]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """Precomputed float64 tables of a beta schedule (Ho et al. 2020; Nichol & Dhariwal 2021).

  `timestep_map[k]` is the original timestep that index k of this (possibly respaced) process stands
  for; the network is always fed the original timestep.
  """

  betas: np.ndarray
  timestep_map: np.ndarray

  @classmethod
  def from_betas(cls, betas: np.ndarray, timestep_map: Optional[np.ndarray] = None) -> "GaussianDiffusion":
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
      raise ValueError("betas must be a 1-D array in (0, 1].")
    if timestep_map is None:
      timestep_map = np.arange(len(betas))
    return cls(betas=betas, timestep_map=np.asarray(timestep_map, dtype=np.int32))

  @classmethod
  def from_schedule(cls, name: str, num_timesteps: int, snr_scale: float = 1.0) -> "GaussianDiffusion":
    return cls.from_betas(get_named_beta_schedule(name, num_timesteps, snr_scale))

  # --- derived float64 tables --------------------------------------------------------------------
  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """ᾱ_t = Π_{s≤t} (1 − β_s)."""
    return np.cumprod(1.0 - self.betas)

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    """ᾱ_{t−1}, with ᾱ_{−1} = 1."""
    return np.append(1.0, self.alphas_cumprod[:-1])

  @property
  def posterior_variance(self) -> np.ndarray:
    """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)  (DDPM eq. 7)."""
    return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    """log β̃_t with β̃_0 (which is 0) replaced by β̃_1."""
    pv = self.posterior_variance
    return np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(self.betas)

  @property
  def posterior_mean_coef1(self) -> np.ndarray:
    """Coefficient of x_0 in μ̃_t: β_t √ᾱ_{t−1} / (1 − ᾱ_t)  (DDPM eq. 7)."""
    return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_mean_coef2(self) -> np.ndarray:
    """Coefficient of x_t in μ̃_t: (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)  (DDPM eq. 7)."""
    return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

  # --- the process ------------------------------------------------------------------------------
  def q_mean_variance(self, x_start: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)  (DDPM eq. 4)."""
    abar = self.alphas_cumprod
    mean = extract(np.sqrt(abar), t, x_start.ndim) * x_start
    variance = extract(1.0 - abar, t, x_start.ndim)
    log_variance = extract(np.log(1.0 - abar), t, x_start.ndim)
    return mean, variance, log_variance

  def q_sample(self, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  (DDPM eq. 4)."""
    abar = self.alphas_cumprod
    return (extract(np.sqrt(abar), t, x_start.ndim) * x_start
            + extract(np.sqrt(1.0 - abar), t, x_start.ndim) * noise)

  def q_posterior_mean_variance(self, x_start: jax.Array, x_t: jax.Array,
                                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean μ̃_t, variance β̃_t and clipped log variance of q(x_{t−1} | x_t, x_0)  (DDPM eqs. 6–7)."""
    nd = x_t.ndim
    mean = extract(self.posterior_mean_coef1, t, nd) * x_start + extract(self.posterior_mean_coef2, t, nd) * x_t
    return mean, extract(self.posterior_variance, t, nd), extract(self.posterior_log_variance_clipped, t, nd)

  def predict_xstart_from_eps(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε  (DDPM eq. 4 solved for x_0)."""
    abar = self.alphas_cumprod
    return (extract(np.sqrt(1.0 / abar), t, x_t.ndim) * x_t
            - extract(np.sqrt(1.0 / abar - 1.0), t, x_t.ndim) * eps)

  def predict_eps_from_xstart(self, x_t: jax.Array, t: jax.Array, pred_xstart: jax.Array) -> jax.Array:
    """ε = (√(1/ᾱ_t) x_t − x̂_0) / √(1/ᾱ_t − 1), the inverse of `predict_xstart_from_eps`."""
    abar = self.alphas_cumprod
    return ((extract(np.sqrt(1.0 / abar), t, x_t.ndim) * x_t - pred_xstart)
            / extract(np.sqrt(1.0 / abar - 1.0), t, x_t.ndim))

  def learned_range_log_variance(self, v: jax.Array, t: jax.Array) -> jax.Array:
    """log Σ_θ = f log β_t + (1 − f) log β̃_t with f = (v + 1)/2  (Improved DDPM eq. 15)."""
    max_log = extract(np.log(self.betas), t, v.ndim)
    min_log = extract(self.posterior_log_variance_clipped, t, v.ndim)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log

  def p_mean_variance(self, model_output: jax.Array, x_t: jax.Array, t: jax.Array, clip_denoised: bool = True,
                      denoised_fn: Optional[Callable[[jax.Array], jax.Array]] = None) -> dict[str, jax.Array]:
    """Mean and log variance of p_θ(x_{t−1} | x_t) from the network's (ε, v) output.

    The mean is μ̃_t(x̂_0, x_t) with x̂_0 from ε (optionally mapped by `denoised_fn`, then clipped to
    [−1, 1]); the log variance is the learned-range mix of eq. 15.
    """
    channels = x_t.shape[-1]
    eps, v = model_output[..., :channels], model_output[..., channels:]
    log_variance = self.learned_range_log_variance(v, t)
    pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
    if denoised_fn is not None:
      pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}
