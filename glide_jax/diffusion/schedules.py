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


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
  """Betas [T] in float64 for "linear" or "squaredcos_cap_v2" (alias "cosine")."""
  if num_timesteps < 1:
    raise ConfigError(f"config.diffusion.num_timesteps must be a positive integer, got {num_timesteps}.")
  if name == "linear":
    return linear_beta_schedule(num_timesteps)
  if canonical_schedule_name(name) == "squaredcos_cap_v2":
    return betas_for_alpha_bar(num_timesteps, alpha_bar_cosine)
  raise ConfigError(
      f"Unknown noise schedule {name!r}: config.diffusion.noise_schedule must be 'linear' or 'squaredcos_cap_v2'.")
