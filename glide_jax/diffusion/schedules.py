"""Beta schedules (improved-diffusion `get_named_beta_schedule`), built in float64."""

from __future__ import annotations

import math

import numpy as np

from glide_jax.errors import ConfigError


def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
  """DDPM's linear schedule, scaled by 1000/T so any T matches the T=1000 curve (Nichol & Dhariwal, 2021)."""
  scale = 1000 / num_timesteps
  return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def alpha_bar_cosine(s: float) -> float:
  """ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2), the cosine schedule of Improved DDPM eq. 17."""
  return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)  (Improved DDPM, below eq. 17)."""
  betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
  return np.array(betas, dtype=np.float64)


# Schedule names the config accepts (config.diffusion.noise_schedule); the config validator reads this table.
SCHEDULE_NAMES = ("linear", "squaredcos_cap_v2", "cosine")


def canonical_schedule_name(name: str) -> str:
  """The schedule's reference name: "cosine" is "squaredcos_cap_v2"."""
  return "squaredcos_cap_v2" if name == "cosine" else name


def scale_snr(betas: np.ndarray, snr_scale: float) -> np.ndarray:
  """The betas whose SNR(t) = ᾱ_t / (1 − ᾱ_t) is `snr_scale` times that of `betas` at every t:
  ᾱ'_t = k ᾱ_t / (1 − ᾱ_t + k ᾱ_t), β'_t = 1 − ᾱ'_t / ᾱ'_{t−1}.

  Chen (2023, arXiv:2301.10972, §2.2: the input scaled by b, k = b², x_t kept at unit variance) and Hoogeboom
  et al. (2023, arXiv:2301.11093, §3.1: the shifted cosine schedule, log SNR + log k) move a schedule towards
  more noise for images whose content is coarse relative to their pixels: averaging a region of n pixels raises
  its SNR n-fold, so its layout is already settled at noise levels that an unscaled schedule barely trains on.
  k < 1 spends more of training (and sampling) there; k = 1 returns `betas` unchanged.
  """
  if snr_scale == 1.0:
    return betas
  alpha_bar = np.cumprod(1.0 - betas)
  scaled = snr_scale * alpha_bar / (1.0 - alpha_bar + snr_scale * alpha_bar)
  return 1.0 - scaled / np.concatenate([[1.0], scaled[:-1]])


def get_named_beta_schedule(name: str, num_timesteps: int, snr_scale: float = 1.0) -> np.ndarray:
  """Betas [T] in float64 for "linear" or "squaredcos_cap_v2" (alias "cosine"), their SNR scaled by
  `snr_scale` (config.diffusion.snr_scale; `scale_snr`)."""
  if num_timesteps < 1:
    raise ConfigError(f"config.diffusion.num_timesteps must be a positive integer, got {num_timesteps}.")
  if name == "linear":
    return scale_snr(linear_beta_schedule(num_timesteps), snr_scale)
  if canonical_schedule_name(name) == "squaredcos_cap_v2":
    return scale_snr(betas_for_alpha_bar(num_timesteps, alpha_bar_cosine), snr_scale)
  raise ConfigError(
      f"Unknown noise schedule {name!r}: config.diffusion.noise_schedule must be 'linear' or 'squaredcos_cap_v2'.")
