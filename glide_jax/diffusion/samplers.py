"""The reverse process, one step at a time: ancestral (DDPM), DDIM and DPM-Solver++(2M) updates, and the whole
loop as a scan.

`SAMPLERS` is the dispatch: a name (config.sample.sampler, checked against this table) → a `Sampler`, the
update and the state it carries from step to step through the scan (none for one-step rules; a multistep
solver keeps its previous predictions there). A new sampler is one function and one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from glide_jax.diffusion.gaussian import GaussianDiffusion, extract

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t [B,H,W,C], index [B]) → output [B,H,W,2C]
DenoisedFn = Callable[[jax.Array], jax.Array]  # x̂_0 → x̂_0, applied before clipping.
AfterStepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_{t−1}, index t [B]) → x_{t−1}
# (x_t, index t [B]) → s ∇_{x_t} log p(c | x_t), a classifier's (or CLIP's) gradient, scaled: guidance that
# moves the sampler's step itself rather than the network's output.
CondFn = Callable[[jax.Array, jax.Array], jax.Array]


def conditioned_xstart(diffusion: GaussianDiffusion, x: jax.Array, t: jax.Array, xstart: jax.Array,
                       gradient: jax.Array) -> jax.Array:
  """x̂_0 after ε̂ − √(1 − ᾱ_t) · gradient: the score conditioned on c (Song et al. 2021, as improved-diffusion's
  `condition_score`), for the deterministic samplers. Not clipped again, as there."""
  eps = diffusion.predict_eps_from_xstart(x, t, xstart)
  eps = eps - extract(np.sqrt(1.0 - diffusion.alphas_cumprod), t, x.ndim) * gradient
  return diffusion.predict_xstart_from_eps(x, t, eps)


def p_sample_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array,
                  noise: jax.Array, denoised_fn: Optional[DenoisedFn] = None,
                  cond_fn: Optional[CondFn] = None) -> jax.Array:
  """x_{t−1} = μ_θ(x_t, t) + [t ≠ 0] σ_θ z: ancestral sampling from p_θ (DDPM Alg. 2, x̂_0 clipped). With a
  `cond_fn`, the mean moves to μ + Σ · cond_fn(x_t, t) (Sohl-Dickstein et al. 2015; GLIDE §2.4's CLIP guidance,
  glide-text2im's `condition_mean`)."""
  out = diffusion.p_mean_variance(output, x, t, clip_denoised=True, denoised_fn=denoised_fn)
  mean = out["mean"]
  if cond_fn is not None:
    mean = mean + jnp.exp(out["log_variance"]) * cond_fn(x, t)
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return mean + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise


def ddim_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array, noise: jax.Array,
              eta: float = 0.0, denoised_fn: Optional[DenoisedFn] = None, cond_fn: Optional[CondFn] = None
              ) -> jax.Array:
  """DDIM (Song et al. 2021, eq. 12): x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε′ + [t ≠ 0] σ z.

  ε′ is recomputed from the clipped x̂_0 (moved by `cond_fn` first: `conditioned_xstart`);
  σ = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
  """
  xstart = diffusion.p_mean_variance(output, x, t, clip_denoised=True, denoised_fn=denoised_fn)["pred_xstart"]
  if cond_fn is not None:
    xstart = conditioned_xstart(diffusion, x, t, xstart, cond_fn(x, t))
  eps = diffusion.predict_eps_from_xstart(x, t, xstart)
  abar = extract(diffusion.alphas_cumprod, t, x.ndim)
  abar_prev = extract(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
  mean = xstart * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return mean + nonzero * sigma * noise


def dpm_solver_pp_2m_tables(diffusion: GaussianDiffusion) -> dict[str, np.ndarray]:
  """Per-step coefficients of DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2) on this process's
  steps, float64, indexed by the step t that goes to t−1.

  With α = √ᾱ, σ = √(1 − ᾱ) and λ = log(α/σ), the step from t to t−1 has h_t = λ_{t−1} − λ_t and is
  x_{t−1} = (σ_{t−1}/σ_t) x_t + α_{t−1}(1 − e^{−h_t}) D_t, D_t = x̂_0(t) + (1/(2r_t)) (x̂_0(t) − x̂_0(t+1)),
  r_t = h_{t+1}/h_t. First order (weight 0, which is DDIM with η = 0): the first step (no earlier x̂_0), the
  last (to ᾱ = 1, where h = ∞) and the one before it, as diffusers' `lower_order_final` does below 15 steps.
  On steps uniform in t, λ grows fastest at the end, so that step's weight h_1/(2 h_2) is large and its
  extrapolation costs more than the order gains (measured on Gaussian data: docs/sampling.md).
  """
  abar, abar_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
  sigma, sigma_prev = np.sqrt(1.0 - abar), np.sqrt(1.0 - abar_prev)
  with np.errstate(divide="ignore"):  # λ_{−1} = ∞: the last step lands on x̂_0.
    h = 0.5 * (np.log(abar_prev) - np.log1p(-abar_prev)) - 0.5 * (np.log(abar) - np.log1p(-abar))
  weight = np.zeros_like(h)
  weight[2:-1] = h[2:-1] / (2.0 * h[3:])  # 1/(2 r_t) for 1 < t < K−1.
  return {"x_ratio": sigma_prev / sigma, "xstart_coef": np.sqrt(abar_prev) * -np.expm1(-h),
          "second_order_weight": weight}


def dpm_solver_pp_2m_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array,
                          previous_xstart: jax.Array, denoised_fn: Optional[DenoisedFn] = None,
                          cond_fn: Optional[CondFn] = None) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) step on the data prediction x̂_0 (clipped, as every sampler here, then moved by
  `cond_fn`: `conditioned_xstart`): (x_{t−1}, x̂_0), the latter to be passed back as `previous_xstart` at t−1.
  Deterministic: one network call per step."""
  tables = dpm_solver_pp_2m_tables(diffusion)
  xstart = diffusion.p_mean_variance(output, x, t, clip_denoised=True, denoised_fn=denoised_fn)["pred_xstart"]
  if cond_fn is not None:
    xstart = conditioned_xstart(diffusion, x, t, xstart, cond_fn(x, t))
  d = xstart + extract(tables["second_order_weight"], t, x.ndim) * (xstart - previous_xstart)
  return extract(tables["x_ratio"], t, x.ndim) * x + extract(tables["xstart_coef"], t, x.ndim) * d, xstart


# (diffusion, network output, x_t, t [B], noise, carry, *, eta, denoised_fn, cond_fn) → (x_{t−1}, carry)
SamplerStep = Callable[..., tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A reverse-process update and its per-step state: `init_carry(x_T)` starts it, `step` updates both."""

  step: SamplerStep
  init_carry: Callable[[jax.Array], Any] = lambda x_T: ()


def _ddpm(diffusion, output, x, t, noise, carry, *, eta, denoised_fn, cond_fn):
  del eta  # Ancestral sampling has no η.
  return p_sample_step(diffusion, output, x, t, noise, denoised_fn=denoised_fn, cond_fn=cond_fn), carry


def _ddim(diffusion, output, x, t, noise, carry, *, eta, denoised_fn, cond_fn):
  return ddim_step(diffusion, output, x, t, noise, eta=eta, denoised_fn=denoised_fn, cond_fn=cond_fn), carry


def _dpm_solver_pp_2m(diffusion, output, x, t, noise, carry, *, eta, denoised_fn, cond_fn):
  del noise, eta  # An ODE solver: deterministic.
  return dpm_solver_pp_2m_step(diffusion, output, x, t, carry, denoised_fn=denoised_fn, cond_fn=cond_fn)


# The samplers config.sample.sampler may name (the config validator reads this table's keys).
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(_ddpm),
    "ddim": Sampler(_ddim),
    # The carry is the previous step's x̂_0 (its weight is 0 at the first step).
    "dpm_solver_pp_2m": Sampler(_dpm_solver_pp_2m, init_carry=jnp.zeros_like),
}


def sample_loop(model_fn: ModelFn, diffusion: GaussianDiffusion, x_T: jax.Array, rng: jax.Array,
                sampler: str = "ddpm", eta: float = 0.0, denoised_fn: Optional[DenoisedFn] = None,
                after_step: Optional[AfterStepFn] = None, cond_fn: Optional[CondFn] = None) -> jax.Array:
  """Runs t = K−1 … 0 as one lax.scan with `SAMPLERS[sampler]`; step i's noise is normal(fold_in(rng, i)).

  `denoised_fn` maps every step's x̂_0 (an inpainting model's known pixels are put back there);
  `after_step` edits every step's x_{t−1} (the replacement method of editing with an ordinary model);
  `cond_fn` guides every step by a gradient (DDPM moves its mean, the others their x̂_0: see each step).
  """
  rule = SAMPLERS[sampler]

  def body(carry, i):
    x, state = carry
    t = jnp.full((x.shape[0],), i, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    x, state = rule.step(diffusion, model_fn(x, t), x, t, noise, state, eta=eta, denoised_fn=denoised_fn,
                         cond_fn=cond_fn)
    return ((x if after_step is None else after_step(x, t)), state), None

  (x, _), _ = jax.lax.scan(body, (x_T, rule.init_carry(x_T)), jnp.arange(diffusion.num_timesteps - 1, -1, -1))
  return x
