"""The reverse process, one step at a time: ancestral (DDPM) and DDIM updates, and the whole loop as a scan.

`SAMPLERS` is the dispatch: a name (config.sample.sampler, checked against this table) → a `Sampler`, the
update and the state it carries from step to step through the scan (none for one-step rules; a multistep
solver keeps its previous predictions there). A new sampler is one function and one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from glide_jax.diffusion.gaussian import GaussianDiffusion, extract

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t [B,H,W,C], index [B]) → output [B,H,W,2C]
DenoisedFn = Callable[[jax.Array], jax.Array]  # x̂_0 → x̂_0, applied before clipping.
AfterStepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_{t−1}, index t [B]) → x_{t−1}


def p_sample_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array,
                  noise: jax.Array, denoised_fn: Optional[DenoisedFn] = None) -> jax.Array:
  """x_{t−1} = μ_θ(x_t, t) + [t ≠ 0] σ_θ z: ancestral sampling from p_θ (DDPM Alg. 2, x̂_0 clipped)."""
  out = diffusion.p_mean_variance(output, x, t, clip_denoised=True, denoised_fn=denoised_fn)
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise


def ddim_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array, noise: jax.Array,
              eta: float = 0.0, denoised_fn: Optional[DenoisedFn] = None) -> jax.Array:
  """DDIM (Song et al. 2021, eq. 12): x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε′ + [t ≠ 0] σ z.

  ε′ is recomputed from the clipped x̂_0; σ = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
  """
  out = diffusion.p_mean_variance(output, x, t, clip_denoised=True, denoised_fn=denoised_fn)
  eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
  abar = extract(diffusion.alphas_cumprod, t, x.ndim)
  abar_prev = extract(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
  mean = out["pred_xstart"] * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return mean + nonzero * sigma * noise


# (diffusion, network output, x_t, t [B], noise, carry, *, eta, denoised_fn) → (x_{t−1}, carry)
SamplerStep = Callable[..., tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A reverse-process update and its per-step state: `init_carry(x_T)` starts it, `step` updates both."""

  step: SamplerStep
  init_carry: Callable[[jax.Array], Any] = lambda x_T: ()


def _ddpm(diffusion, output, x, t, noise, carry, *, eta, denoised_fn):
  del eta  # Ancestral sampling has no η.
  return p_sample_step(diffusion, output, x, t, noise, denoised_fn=denoised_fn), carry


def _ddim(diffusion, output, x, t, noise, carry, *, eta, denoised_fn):
  return ddim_step(diffusion, output, x, t, noise, eta=eta, denoised_fn=denoised_fn), carry


# The samplers config.sample.sampler may name (the config validator reads this table's keys).
SAMPLERS: dict[str, Sampler] = {"ddpm": Sampler(_ddpm), "ddim": Sampler(_ddim)}


def sample_loop(model_fn: ModelFn, diffusion: GaussianDiffusion, x_T: jax.Array, rng: jax.Array,
                sampler: str = "ddpm", eta: float = 0.0, denoised_fn: Optional[DenoisedFn] = None,
                after_step: Optional[AfterStepFn] = None) -> jax.Array:
  """Runs t = K−1 … 0 as one lax.scan with `SAMPLERS[sampler]`; step i's noise is normal(fold_in(rng, i)).

  `denoised_fn` maps every step's x̂_0 (an inpainting model's known pixels are put back there);
  `after_step` edits every step's x_{t−1} (the replacement method of editing with an ordinary model).
  """
  rule = SAMPLERS[sampler]

  def body(carry, i):
    x, state = carry
    t = jnp.full((x.shape[0],), i, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    x, state = rule.step(diffusion, model_fn(x, t), x, t, noise, state, eta=eta, denoised_fn=denoised_fn)
    return ((x if after_step is None else after_step(x, t)), state), None

  (x, _), _ = jax.lax.scan(body, (x_T, rule.init_carry(x_T)), jnp.arange(diffusion.num_timesteps - 1, -1, -1))
  return x
