"""Sampling with classifier-free guidance: the whole reverse process is one `lax.scan` inside `jit`.

The guided network call (GLIDE's text2im notebook): one forward pass on [conditional, unconditional]
(the latter with the empty prompt) sharing x_t; ε̃ = ε_u + s (ε_c − ε_u); the variance output v comes
from the conditional half. Prompts are encoded once per call, not at every step. The guidance scale is
an input array, so one compiled sampler serves every scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from glide_jax import sharding as sharding_lib
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.diffusion.gaussian import extract
from glide_jax.diffusion.respace import respace, space_timesteps
from glide_jax.errors import ConfigError
from glide_jax.model import Text2ImUNet

SAMPLERS = ("ddpm", "ddim")

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t [B,H,W,C], index [B]) → output [B,H,W,2C]


def p_sample_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array,
                  noise: jax.Array) -> jax.Array:
  """x_{t−1} = μ_θ(x_t, t) + [t ≠ 0] σ_θ z: ancestral sampling from p_θ (DDPM Alg. 2, x̂_0 clipped)."""
  out = diffusion.p_mean_variance(output, x, t, clip_denoised=True)
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise


def ddim_step(diffusion: GaussianDiffusion, output: jax.Array, x: jax.Array, t: jax.Array, noise: jax.Array,
              eta: float = 0.0) -> jax.Array:
  """DDIM (Song et al. 2021, eq. 12): x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε′ + [t ≠ 0] σ z.

  ε′ is recomputed from the clipped x̂_0; σ = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
  """
  out = diffusion.p_mean_variance(output, x, t, clip_denoised=True)
  eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
  abar = extract(diffusion.alphas_cumprod, t, x.ndim)
  abar_prev = extract(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
  mean = out["pred_xstart"] * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
  nonzero = (t != 0).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
  return mean + nonzero * sigma * noise


def sample_loop(model_fn: ModelFn, diffusion: GaussianDiffusion, x_T: jax.Array, rng: jax.Array,
                sampler: str = "ddpm", eta: float = 0.0) -> jax.Array:
  """Runs t = K−1 … 0 as one lax.scan; step i's noise is normal(fold_in(rng, i))."""
  step = functools.partial(ddim_step, eta=eta) if sampler == "ddim" else p_sample_step

  def body(x, i):
    t = jnp.full((x.shape[0],), i, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return step(diffusion, model_fn(x, t), x, t, noise), None

  x, _ = jax.lax.scan(body, x_T, jnp.arange(diffusion.num_timesteps - 1, -1, -1))
  return x


def guided_model_fn(model: Text2ImUNet, params: Any, diffusion: GaussianDiffusion, xf_out: jax.Array,
                    xf_proj: jax.Array, scales: jax.Array) -> ModelFn:
  """The classifier-free-guided network: rows of xf_* interleave (conditional, unconditional) per sample."""
  timestep_map = jnp.asarray(diffusion.timestep_map)

  def fn(x: jax.Array, t: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    x2 = jnp.repeat(x, 2, axis=0)  # Both halves see the same x_t.
    out = model.apply({"params": params}, x2, jnp.repeat(timestep_map[t], 2), xf_out, xf_proj,
                      method=Text2ImUNet.denoise)
    out = out.reshape(b, 2, *out.shape[1:])
    cond, uncond = out[:, 0], out[:, 1]
    s = scales.reshape(-1, *([1] * (x.ndim - 1))).astype(out.dtype)
    eps = uncond[..., :c] + s * (cond[..., :c] - uncond[..., :c])
    return jnp.concatenate([eps, cond[..., c:]], axis=-1)

  return fn


def sampling_timesteps(sampler: str, respacing: str, num_timesteps: int, eta: float) -> GaussianDiffusion:
  if sampler not in SAMPLERS:
    raise ConfigError(f"Unknown sampler {sampler!r}: config.sample.sampler must be one of {SAMPLERS}.")
  if not (math.isfinite(eta) and eta >= 0):
    raise ConfigError(f"config.sample.ddim_eta = {eta!r} is invalid: it must be a finite number >= 0.")
  steps = space_timesteps(num_timesteps, respacing)
  if not steps:
    raise ConfigError(f"Respacing {respacing!r} keeps zero sampling steps; ask for at least 1.")
  return steps


@dataclasses.dataclass
class GuidedSampler:
  """Compiled classifier-free-guided sampler for a model and a (possibly respaced) process.

  sampler: "ddpm" (ancestral) or "ddim"; respacing: "" (all T steps), "100", "10,10,3,2,2", "ddim50"...
  """

  model: Text2ImUNet
  base_diffusion: GaussianDiffusion
  sampler: str = "ddpm"
  respacing: str = ""
  eta: float = 0.0
  pad_id: int = 256
  mesh: Optional[Mesh] = None

  def __post_init__(self):
    steps = sampling_timesteps(self.sampler, self.respacing, self.base_diffusion.num_timesteps, self.eta)
    self.diffusion = respace(self.base_diffusion, steps)
    self._compiled: dict = {}
    mesh = self.mesh
    if mesh is None:
      self._sample = jax.jit(self._sample_impl)
    else:
      batch, rep = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
      self._sample = jax.jit(self._sample_impl, in_shardings=(None, batch, batch, batch, rep),
                             out_shardings=batch)

  @property
  def num_steps(self) -> int:
    return self.diffusion.num_timesteps

  def _sample_impl(self, params, tokens, mask, scales, rng):
    b = tokens.shape[0]
    empty_tokens = jnp.full_like(tokens, self.pad_id)
    both_tokens = jnp.stack([tokens, empty_tokens], axis=1).reshape(2 * b, -1)
    both_mask = jnp.stack([mask, jnp.zeros_like(mask)], axis=1).reshape(2 * b, -1)
    xf_out, xf_proj = self.model.apply({"params": params}, both_tokens, both_mask,
                                       method=Text2ImUNet.encode_text)
    model_fn = guided_model_fn(self.model, params, self.diffusion, xf_out, xf_proj, scales)
    init_rng, loop_rng = jax.random.split(rng)
    shape = (b, self.model.image_size, self.model.image_size, self.model.in_channels)
    x_T = jax.random.normal(init_rng, shape, jnp.float32)
    return sample_loop(model_fn, self.diffusion, x_T, loop_rng, self.sampler, self.eta)

  def __call__(self, params: Any, tokens: np.ndarray, mask: np.ndarray, scales: np.ndarray,
               rng: jax.Array) -> jax.Array:
    """Images [B, H, W, C] in [−1, 1] for prompts (tokens, mask) [B, L] at per-sample guidance scales [B]."""
    scales = np.asarray(scales, np.float32)
    if scales.shape != (tokens.shape[0],):
      raise ValueError("scales needs one guidance scale per sample.")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
      raise ConfigError(f"Guidance scales must be finite and >= 0, got {scales.tolist()}.")
    if self.mesh is not None:
      sharding_lib.check_batch_divisible(tokens.shape[0], self.mesh, "the sampling batch")
    args = (params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(scales), rng)
    if jax.process_count() > 1:  # Compiled on every process before any runs (see compiled_for_all_processes).
      key = tuple((x.shape, x.dtype) for x in args[1:4])
      if key not in self._compiled:
        self._compiled[key] = sharding_lib.compiled_for_all_processes(self._sample, *args)
      return self._compiled[key](*args)
    return self._sample(*args)
