"""Respacing: sampling with a subset of the training timesteps (improved-diffusion `respace.py`)."""

from __future__ import annotations

import numpy as np

from glide_jax.diffusion.gaussian import GaussianDiffusion
from glide_jax.errors import ConfigError


def space_timesteps(num_timesteps: int, section_counts: str) -> set[int]:
  """The timesteps to keep, with improved-diffusion's semantics (and glide-text2im's "fast27").

  "100": 100 steps evenly strided (rounded half to even); "10,10,3,2,2": the process cut into 5 equal
  sections with that many steps each; "ddimN": the integer stride giving exactly N steps; "" or
  str(num_timesteps): every step.
  """
  spec = section_counts.strip()
  if spec in ("", str(num_timesteps)):
    return set(range(num_timesteps))
  if spec == "fast27":
    steps = space_timesteps(num_timesteps, "10,10,3,2,2")
    steps.remove(num_timesteps - 1)
    steps.add(num_timesteps - 3)
    return steps
  if spec.startswith("ddim"):
    try:
      desired = int(spec[len("ddim"):])
    except ValueError:
      raise ConfigError(f"Bad respacing {section_counts!r}: write ddimN with N an integer, e.g. 'ddim50'.") from None
    for stride in range(1, num_timesteps):
      if len(range(0, num_timesteps, stride)) == desired:
        return set(range(0, num_timesteps, stride))
    raise ConfigError(f"Bad respacing {section_counts!r}: no integer stride gives exactly {desired} of "
                      f"{num_timesteps} steps; pick another N.")
  try:
    counts = [int(x) for x in spec.split(",")]
  except ValueError:
    raise ConfigError(f"Unknown respacing {section_counts!r}: use '' (all steps), a count like '100', sections "
                      f"like '10,10,3,2,2', 'ddimN' or 'fast27'.") from None
  if any(c < 1 for c in counts):
    raise ConfigError(f"Bad respacing {section_counts!r}: every section needs at least 1 step.")
  size_per, extra = divmod(num_timesteps, len(counts))
  start, steps = 0, []
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ConfigError(f"Bad respacing {section_counts!r}: a section of {size} steps cannot hold {count}.")
    frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
    cur = 0.0
    for _ in range(count):
      steps.append(start + round(cur))  # Python's round: half to even, as the reference.
      cur += frac_stride
    start += size
  return set(steps)


def respace(diffusion: GaussianDiffusion, use_timesteps: set[int]) -> GaussianDiffusion:
  """The process over the kept steps: β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}} (ᾱ before the first = 1).

  Its timestep_map sends index k back to the original timestep s_k, which is what the network sees.
  """
  kept = sorted(int(s) for s in use_timesteps)
  abar = diffusion.alphas_cumprod[kept]
  previous = np.append(1.0, abar[:-1])
  return GaussianDiffusion.from_betas(1.0 - abar / previous, timestep_map=diffusion.timestep_map[kept])
