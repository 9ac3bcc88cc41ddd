"""Sampling with classifier-free guidance: the whole reverse process is one `lax.scan` inside `jit`.

The guided network call (GLIDE's text2im notebook): one forward pass on [conditional, unconditional]
(the latter with the empty prompt) sharing x_t; ε̃ = ε_u + s (ε_c − ε_u); the variance output v comes
from the conditional half. Prompts are encoded once per call, not at every step. The guidance scale is
an input array, so one compiled sampler serves every scale. Guidance may be limited to an interval of
timesteps (Kynkäänniemi et al. 2024, arXiv:2404.07724); outside it the step uses ε_c alone (s = 1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from glide_jax import sharding as sharding_lib
from glide_jax.diffusion import SAMPLERS, GaussianDiffusion, known_region, respace, sample_loop, space_timesteps
from glide_jax.diffusion.samplers import ModelFn
from glide_jax.model import Text2ImUNet


def guidance_active(timesteps: jax.Array, num_timesteps: int, interval: tuple[float, float]) -> jax.Array:
  """Whether guidance applies at original timesteps t of a T-step process: lo ≤ t / T < hi for
  interval = (lo, hi); (0, 1) is every step, (0.1, 0.8) leaves out the noisiest 20% and the last 10%."""
  u = timesteps.astype(jnp.float32) / num_timesteps
  return (u >= interval[0]) & (u < interval[1])


def guided_model_fn(model: Text2ImUNet, params: Any, diffusion: GaussianDiffusion, xf_out: jax.Array,
                    xf_proj: jax.Array, scales: jax.Array, interval: tuple[float, float] = (0.0, 1.0),
                    num_timesteps: int | None = None, **extra_inputs: jax.Array) -> ModelFn:
  """The classifier-free-guided network: rows of xf_* interleave (conditional, unconditional) per sample.
  Both halves see the same extra inputs (an inpainting model's image and mask, an upsampler's low_res).
  Outside the guidance `interval` (fractions of the base process's num_timesteps) the scale is 1."""
  timestep_map = jnp.asarray(diffusion.timestep_map)
  num_timesteps = num_timesteps or diffusion.num_timesteps
  extra_inputs = {k: jnp.repeat(v, 2, axis=0) for k, v in extra_inputs.items()}

  def fn(x: jax.Array, t: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    x2 = jnp.repeat(x, 2, axis=0)  # Both halves see the same x_t.
    out = model.apply({"params": params}, x2, jnp.repeat(timestep_map[t], 2), xf_out, xf_proj,
                      method=Text2ImUNet.denoise, **extra_inputs)
    out = out.reshape(b, 2, *out.shape[1:])
    cond, uncond = out[:, 0], out[:, 1]
    s = jnp.where(guidance_active(timestep_map[t], num_timesteps, interval), scales, 1.0)
    s = s.reshape(-1, *([1] * (x.ndim - 1))).astype(out.dtype)
    eps = uncond[..., :c] + s * (cond[..., :c] - uncond[..., :c])
    return jnp.concatenate([eps, cond[..., c:]], axis=-1)

  return fn


def conditional_model_fn(model: Text2ImUNet, params: Any, diffusion: GaussianDiffusion, xf_out: jax.Array,
                         xf_proj: jax.Array, **extra_inputs: jax.Array) -> ModelFn:
  """The conditional network alone (no guidance: one forward pass per sample, as glide-text2im's upsampler)."""
  timestep_map = jnp.asarray(diffusion.timestep_map)

  def fn(x: jax.Array, t: jax.Array) -> jax.Array:
    return model.apply({"params": params}, x, timestep_map[t], xf_out, xf_proj, method=Text2ImUNet.denoise,
                       **extra_inputs)

  return fn


@dataclasses.dataclass
class GuidedSampler:
  """Compiled classifier-free-guided sampler for a model and a (possibly respaced) process.

  sampler: "ddpm" (ancestral) or "ddim"; respacing: "" (all T steps), "100", "10,10,3,2,2", "ddim50"...;
  temperature: the scale of the initial noise x_T (glide-text2im's upsampler uses 0.997); guided=False:
  the conditional model alone, at half the cost (the guidance scales are then ignored); guidance_interval:
  (lo, hi), guidance only where lo ≤ t / T < hi (`guidance_active`), the conditional model elsewhere.
  """

  model: Text2ImUNet
  base_diffusion: GaussianDiffusion
  sampler: str = "ddpm"
  respacing: str = ""
  eta: float = 0.0
  pad_id: int = 256
  mesh: Optional[Mesh] = None
  temperature: float = 1.0
  guided: bool = True
  guidance_interval: tuple[float, float] = (0.0, 1.0)

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"Unknown sampler {self.sampler!r}; choose one of {SAMPLERS}.")
    self.diffusion = respace(self.base_diffusion, space_timesteps(self.base_diffusion.num_timesteps, self.respacing))
    self._compiled: dict = {}
    mesh = self.mesh
    if mesh is None:
      self._sample = jax.jit(self._sample_impl)
    else:
      batch, rep = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
      self._sample = jax.jit(self._sample_impl, in_shardings=(None, batch, batch, batch, rep, batch, batch, batch),
                             out_shardings=batch)

  @property
  def num_steps(self) -> int:
    return self.diffusion.num_timesteps

  def _sample_impl(self, params, tokens, mask, scales, rng, image=None, known=None, low_res=None):
    b = tokens.shape[0]
    if self.guided:
      empty_tokens = jnp.full_like(tokens, self.pad_id)
      tokens = jnp.stack([tokens, empty_tokens], axis=1).reshape(2 * b, -1)
      mask = jnp.stack([mask, jnp.zeros_like(mask)], axis=1).reshape(2 * b, -1)
    xf_out, xf_proj = self.model.apply({"params": params}, tokens, mask, method=Text2ImUNet.encode_text)
    if self.guided:
      make_model_fn = functools.partial(guided_model_fn, self.model, params, self.diffusion, xf_out, xf_proj, scales,
                                        self.guidance_interval, self.base_diffusion.num_timesteps)
    else:
      make_model_fn = functools.partial(conditional_model_fn, self.model, params, self.diffusion, xf_out, xf_proj)
    init_rng, loop_rng = jax.random.split(rng)
    c = self.model.config
    shape = (b, c.image_size, c.image_size, c.in_channels)
    x_T = self.temperature * jax.random.normal(init_rng, shape, jnp.float32)
    extra_inputs = {} if low_res is None else {"low_res": low_res}
    if known is None:
      return sample_loop(make_model_fn(**extra_inputs), self.diffusion, x_T, loop_rng, self.sampler, self.eta)
    if c.inpaint:  # The model sees the known part; x̂_0 keeps it at every step.
      model_fn = make_model_fn(inpaint_image=image, inpaint_mask=known, **extra_inputs)
      x = sample_loop(model_fn, self.diffusion, x_T, loop_rng, self.sampler, self.eta,
                      denoised_fn=known_region.keep_known_xstart(image, known))
    else:  # An ordinary model: the replacement method.
      model_fn = make_model_fn(**extra_inputs)
      x = sample_loop(model_fn, self.diffusion, x_T, loop_rng, self.sampler, self.eta,
                      after_step=known_region.replace_known(self.diffusion, image, known, loop_rng))
    return known_region.paste_known(x, image, known)

  def __call__(self, params: Any, tokens: np.ndarray, mask: np.ndarray, scales: np.ndarray,
               rng: jax.Array, image: Optional[np.ndarray] = None, known: Optional[np.ndarray] = None,
               low_res: Optional[np.ndarray] = None) -> jax.Array:
    """Images [B, H, W, C] in [−1, 1] for prompts (tokens, mask) [B, L] at per-sample guidance scales [B].

    Editing: `image` [B, H, W, C] in [−1, 1] and `known` [B, H, W, 1] (1 = keep) regenerate only where
    known is 0, with an inpainting model as glide-text2im does, else by the replacement method. An
    upsampler takes `low_res` [B, h, w, C] in [−1, 1], the images to enlarge.
    """
    scales = np.asarray(scales, np.float32)
    if scales.shape != (tokens.shape[0],):
      raise ValueError("scales needs one guidance scale per sample.")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
      raise ValueError(f"Guidance scales must be finite and >= 0, got {scales.tolist()}.")
    if self.mesh is not None:
      sharding_lib.check_batch_divisible(tokens.shape[0], self.mesh, "the sampling batch")
    if (image is None) != (known is None):
      raise ValueError("Editing needs both the image and the known-pixel mask.")
    if self.model.config.super_res != (low_res is not None):
      raise ValueError("An upsampler samples from low-resolution images (low_res), and only an upsampler does.")
    edit = (None, None) if image is None else (jnp.asarray(image, jnp.float32), jnp.asarray(known, jnp.float32))
    low_res = None if low_res is None else jnp.asarray(low_res, jnp.float32)
    args = (params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(scales), rng, *edit, low_res)
    if jax.process_count() > 1:  # Compiled on every process before any runs (see compiled_for_all_processes).
      key = tuple(None if x is None else (x.shape, x.dtype) for x in args[1:4] + args[5:])
      if key not in self._compiled:
        self._compiled[key] = sharding_lib.compiled_for_all_processes(self._sample, *args)
      return self._compiled[key](*args)
    return self._sample(*args)
