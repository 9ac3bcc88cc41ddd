"""The compiled sampler: the whole reverse process as one `lax.scan` inside `jit`, guided as its spec says.

A `SamplerSpec` (built once from config.sample, derived with `.replace` for the upsampler stage) names the
sampler (`diffusion.samplers.SAMPLERS`), the respacing, DDIM's η, the initial noise's temperature and the
guidance rule (`sampling.guidance.GUIDANCE`). A `GuidedSampler` compiles it for a model and a mesh; its
parameters are bound with `bind` (the compiled program is shared by every binding), so call sites pass
prompts, scales and noise, never weights.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from glide_jax import sharding as sharding_lib
from glide_jax.clip.model import ClipConfig
from glide_jax.diffusion import SAMPLERS, GaussianDiffusion, known_region, respace, sample_loop, space_timesteps
from glide_jax.model import Text2ImUNet
from glide_jax.sampling.guidance import GUIDANCE, GuidanceInputs, guidance_active, split_clip_rows


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """How to sample. sampler: a key of SAMPLERS; respacing: "" (all T steps), "100", "10,10,3,2,2",
  "ddim50"...; eta: DDIM's η; temperature: the scale of the initial noise x_T (glide-text2im's upsampler
  uses 0.997); guidance: a key of GUIDANCE ("none": the conditional model alone, at half the cost, the
  scales unused); guidance_interval: (lo, hi), guidance only where lo ≤ t / T < hi; apg_eta, apg_norm_threshold:
  adaptive projected guidance's η and r (`sampling.guidance.projected_update`)."""

  sampler: str = "ddpm"
  respacing: str = ""
  eta: float = 0.0
  temperature: float = 1.0
  guidance: str = "classifier_free"
  guidance_interval: tuple[float, float] = (0.0, 1.0)
  apg_eta: float = 0.0
  apg_norm_threshold: float = 0.0

  @classmethod
  def from_config(cls, sample_config: ml_collections.ConfigDict) -> "SamplerSpec":
    """The spec config.sample describes (already validated)."""
    s = sample_config
    return cls(sampler=s.sampler, respacing=str(s.respacing), eta=float(s.ddim_eta), guidance=s.guidance,
               guidance_interval=tuple(float(x) for x in s.guidance_interval), apg_eta=float(s.apg_eta),
               apg_norm_threshold=float(s.apg_norm_threshold))

  def replace(self, **changes: Any) -> "SamplerSpec":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class GuidedSampler:
  """A `SamplerSpec` compiled for a model and a mesh; `bind(params)` gives the sampler that runs."""

  model: Text2ImUNet
  base_diffusion: GaussianDiffusion
  spec: SamplerSpec = SamplerSpec()
  pad_id: int = 256
  mesh: Optional[Mesh] = None
  guide_model: Optional[Text2ImUNet] = None  # Autoguidance by a network of another config (None: `model`'s).
  clip_config: Optional[ClipConfig] = None  # CLIP guidance: the noised CLIP bound as "clip"; prompts packed.

  def __post_init__(self):
    for name, table, field in ((self.spec.sampler, SAMPLERS, "sampler"), (self.spec.guidance, GUIDANCE, "guidance")):
      if name not in table:
        raise ValueError(f"Unknown {field} {name!r}; choose one of {tuple(table)}.")
    k, c = self.clip_config, self.model.config
    if k is not None and ((k.image_size, k.image_channels, k.n_timesteps)
                          != (c.image_size, c.in_channels, self.base_diffusion.num_timesteps)):
      raise ValueError(f"The noised CLIP reads {k.image_size} px, {k.image_channels}-channel images at "
                       f"{k.n_timesteps} timesteps; this model makes {c.image_size} px, {c.in_channels}-channel ones "
                       f"at {self.base_diffusion.num_timesteps}.")
    self.diffusion = respace(self.base_diffusion,
                             space_timesteps(self.base_diffusion.num_timesteps, self.spec.respacing))
    self.params: Optional[dict[str, Any]] = None
    self._compiled: dict = {}
    mesh = self.mesh
    if mesh is None:
      self._sample = jax.jit(self._sample_impl)
    else:
      batch, rep = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
      self._sample = jax.jit(self._sample_impl, in_shardings=(None, batch, batch, batch, rep, batch, batch, batch),
                             out_shardings=batch)

  def bind(self, params: Any, **other_params: Any) -> "GuidedSampler":
    """This sampler with the model's `params` (and any other named parameters a guidance rule reads), sharing
    its compiled program: binding new parameters (training's sample grids) compiles nothing."""
    bound = copy.copy(self)
    bound.params = {"model": params, **other_params}
    return bound

  @property
  def num_steps(self) -> int:
    return self.diffusion.num_timesteps

  @property
  def forward_passes_per_sample(self) -> int:
    """The network's forward passes per sample over one sampler call: the rule's passes at each guided step
    (two for classifier-free guidance), one at each step outside the guidance interval."""
    active = np.asarray(guidance_active(jnp.asarray(self.diffusion.timestep_map), self.base_diffusion.num_timesteps,
                                        self.spec.guidance_interval))
    return int(np.sum(np.where(active, GUIDANCE[self.spec.guidance].passes_when_guided, 1)))

  def _sample_impl(self, params, tokens, mask, scales, rng, image=None, known=None, low_res=None):
    spec, rule = self.spec, GUIDANCE[self.spec.guidance]
    clip_text = None
    if self.clip_config is not None:
      (tokens, mask), clip_text = split_clip_rows(tokens, mask, self.model.config.text_ctx)
    rows, row_mask = rule.text_rows(tokens, mask, self.pad_id)
    xf_out, xf_proj = self.model.apply({"params": params["model"]}, rows, row_mask, method=Text2ImUNet.encode_text)
    extra_inputs = {} if low_res is None else {"low_res": low_res}
    if known is not None and self.model.config.inpaint:  # The model sees the known part.
      extra_inputs.update(inpaint_image=image, inpaint_mask=known)
    g = GuidanceInputs(
        model=self.model, params=params, guide_model=self.guide_model, diffusion=self.diffusion,
        num_timesteps=self.base_diffusion.num_timesteps, text_rows=(rows, row_mask), xf_out=xf_out, xf_proj=xf_proj,
        scales=scales, interval=spec.guidance_interval, apg_eta=spec.apg_eta,
        apg_norm_threshold=spec.apg_norm_threshold, extra_inputs=extra_inputs, clip_config=self.clip_config,
        clip_text=clip_text)
    model_fn, cond_fn = rule.model_fn(g), (rule.cond_fn(g) if rule.cond_fn is not None else None)
    init_rng, loop_rng = jax.random.split(rng)
    c = self.model.config
    shape = (tokens.shape[0], c.image_size, c.image_size, c.in_channels)
    x_T = spec.temperature * jax.random.normal(init_rng, shape, jnp.float32)
    if known is None:
      return sample_loop(model_fn, self.diffusion, x_T, loop_rng, spec.sampler, spec.eta, cond_fn=cond_fn)
    if c.inpaint:  # x̂_0 keeps the known part at every step.
      x = sample_loop(model_fn, self.diffusion, x_T, loop_rng, spec.sampler, spec.eta,
                      denoised_fn=known_region.keep_known_xstart(image, known), cond_fn=cond_fn)
    else:  # An ordinary model: the replacement method.
      x = sample_loop(model_fn, self.diffusion, x_T, loop_rng, spec.sampler, spec.eta,
                      after_step=known_region.replace_known(self.diffusion, image, known, loop_rng), cond_fn=cond_fn)
    return known_region.paste_known(x, image, known)

  def __call__(self, tokens: np.ndarray, mask: np.ndarray, scales: np.ndarray,
               rng: jax.Array, image: Optional[np.ndarray] = None, known: Optional[np.ndarray] = None,
               low_res: Optional[np.ndarray] = None) -> jax.Array:
    """Images [B, H, W, C] in [−1, 1] for prompts (tokens, mask) [B, L] at per-sample guidance scales [B].

    Editing: `image` [B, H, W, C] in [−1, 1] and `known` [B, H, W, 1] (1 = keep) regenerate only where
    known is 0, with an inpainting model as glide-text2im does, else by the replacement method. An
    upsampler takes `low_res` [B, h, w, C] in [−1, 1], the images to enlarge.
    """
    if self.params is None:
      raise ValueError("This sampler has no parameters yet: sample with sampler.bind(params).")
    if self.spec.guidance == "autoguidance" and "guide" not in self.params:
      raise ValueError("Autoguidance needs the guide's parameters: sampler.bind(params, guide=guide_params).")
    if (self.spec.guidance == "clip") != (self.clip_config is not None) or (
        self.clip_config is not None and "clip" not in self.params):
      raise ValueError("CLIP guidance, and only it, needs a noised CLIP: GuidedSampler(clip_config=...) bound with "
                       "sampler.bind(params, clip=clip_params), and prompts packed by guidance.pack_clip_rows.")
    width = self.model.config.text_ctx + (0 if self.clip_config is None else self.clip_config.max_text_len)
    if tokens.shape[1] != width:
      raise ValueError(f"Prompt rows of {tokens.shape[1]} tokens; this sampler reads {width} (the model's text_ctx"
                       + ("" if self.clip_config is None else " and the CLIP's max_text_len, packed by pack_clip_rows")
                       + ").")
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
    args = (self.params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(scales), rng, *edit, low_res)
    if jax.process_count() > 1:  # Compiled on every process before any runs (see compiled_for_all_processes).
      key = tuple(None if x is None else (x.shape, x.dtype) for x in args[1:4] + args[5:])
      if key not in self._compiled:
        self._compiled[key] = sharding_lib.compiled_for_all_processes(self._sample, *args)
      return self._compiled[key](*args)
    return self._sample(*args)
