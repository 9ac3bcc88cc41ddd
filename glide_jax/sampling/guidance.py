"""Guidance rules: how a sampling step's network output is made from the prompt, by name.

`GUIDANCE` is the dispatch (config.sample.guidance, checked against this table): each rule says which text
rows the network encodes once per sampler call (`text_rows`) and builds the loop's model function from them
(`model_fn`). A new rule is one entry here; the parameters it needs (a second network's, for guidance by
another model) reach it through `GuidanceInputs.params`, bound into the sampler with `GuidedSampler.bind`.

Classifier-free guidance (GLIDE's text2im notebook): one forward pass on [conditional, unconditional] rows
(the latter with the empty prompt) sharing x_t; ε̃ = ε_u + s (ε_c − ε_u); the variance output v comes from
the conditional half. The guidance scale is an input array, so one compiled sampler serves every scale.
Autoguidance (Karras et al. 2024) replaces the unconditional pass by a weaker version of the model on the
same prompt (an earlier checkpoint of the run, or a smaller model), bound as `GuidanceInputs.params["guide"]`.
Adaptive projected guidance (Sadat et al. 2024) keeps classifier-free guidance's two passes but changes how
they combine, on the denoised predictions x̂_0. Guidance may be limited to an interval of timesteps
(Kynkäänniemi et al. 2024, arXiv:2404.07724); outside it the step uses ε_c alone (s = 1), from a forward
pass on the B conditional rows only. CLIP guidance (GLIDE §2.4) runs the conditional model once per step and
moves the step itself by s ∇ of a noised CLIP's image–prompt similarity (`GuidanceRule.cond_fn`); its prompts
reach the sampler in CLIP tokens, packed beside the model's (`pack_clip_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from glide_jax.clip.model import ClipConfig, clip_guidance_grad, text_embeddings
from glide_jax.diffusion import GaussianDiffusion
from glide_jax.diffusion.gaussian import extract
from glide_jax.diffusion.samplers import CondFn, ModelFn
from glide_jax.model import Text2ImUNet


@dataclasses.dataclass(frozen=True)
class GuidanceInputs:
  """What a rule's model function is built from, inside the compiled sampler."""

  model: Text2ImUNet
  params: dict[str, Any]  # "model": the sampled network's; other names: what `GuidedSampler.bind` added.
  guide_model: Optional[Text2ImUNet]  # The network of params["guide"] when it is not `model` (a smaller one).
  diffusion: GaussianDiffusion  # The respaced process: t indexes its timestep_map.
  num_timesteps: int  # The base process's T, for the guidance interval.
  text_rows: tuple[jax.Array, jax.Array]  # The rule's `text_rows` (tokens, mask), as encoded below.
  xf_out: jax.Array  # `text_rows` encoded by the "model" parameters.
  xf_proj: jax.Array
  scales: jax.Array  # [B] guidance scales.
  interval: tuple[float, float]
  apg_eta: float  # Adaptive projected guidance: the weight of the update's part parallel to x̂_0(c).
  apg_norm_threshold: float  # And the bound r on the update's norm per sample (0: unbounded).
  extra_inputs: dict[str, jax.Array]  # An inpainting model's image and mask, an upsampler's low_res: [B, ...].
  clip_config: Optional[ClipConfig] = None  # CLIP guidance: the noised CLIP of params["clip"],
  clip_text: Optional[tuple[jax.Array, jax.Array]] = None  # and the prompts' CLIP tokens [B, L] and lengths [B].

  def network(self, params: str) -> Text2ImUNet:
    """The module that the parameters named `params` belong to."""
    return self.guide_model if params == "guide" and self.guide_model is not None else self.model

  def encode(self, params: str) -> tuple[jax.Array, jax.Array]:
    """`text_rows` encoded by another network's text transformer: (xf_out, xf_proj)."""
    return self.network(params).apply({"params": self.params[params]}, *self.text_rows,
                                      method=Text2ImUNet.encode_text)

  def denoise(self, x: jax.Array, t: jax.Array, rows: slice = slice(None), params: str = "model",
              text: Optional[tuple[jax.Array, jax.Array]] = None) -> jax.Array:
    """The network `params` on x [R, ...] at respaced steps t [R], with text rows `rows` (of `text`, by
    default the model's encoding) and every extra input repeated to R rows (R a multiple of B)."""
    reps = x.shape[0] // self.scales.shape[0]
    extra = {k: jnp.repeat(v, reps, axis=0) for k, v in self.extra_inputs.items()}
    timestep_map = jnp.asarray(self.diffusion.timestep_map)
    xf_out, xf_proj = (self.xf_out, self.xf_proj) if text is None else text
    return self.network(params).apply({"params": self.params[params]}, x, timestep_map[t], xf_out[rows],
                                      xf_proj[rows], method=Text2ImUNet.denoise, **extra)


def guidance_active(timesteps: jax.Array, num_timesteps: int, interval: tuple[float, float]) -> jax.Array:
  """Whether guidance applies at original timesteps t of a T-step process: lo ≤ t / T < hi for
  interval = (lo, hi); (0, 1) is every step, (0.1, 0.8) leaves out the noisiest 20% and the last 10%."""
  u = timesteps.astype(jnp.float32) / num_timesteps
  return (u >= interval[0]) & (u < interval[1])


def with_empty_prompt(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Rows interleaved (conditional, unconditional) per sample: [B, L] → [2B, L]."""
  b = tokens.shape[0]
  tokens = jnp.stack([tokens, jnp.full_like(tokens, pad_id)], axis=1).reshape(2 * b, -1)
  mask = jnp.stack([mask, jnp.zeros_like(mask)], axis=1).reshape(2 * b, -1)
  return tokens, mask


def guided_scales(g: GuidanceInputs, t: jax.Array, ndim: int, dtype: Any) -> jax.Array:
  """Each row's guidance scale at respaced steps t [B] (1 outside the interval), shaped to broadcast."""
  active = guidance_active(jnp.asarray(g.diffusion.timestep_map)[t], g.num_timesteps, g.interval)
  return jnp.where(active, g.scales, 1.0).reshape(-1, *([1] * (ndim - 1))).astype(dtype)


def only_where_guided(g: GuidanceInputs, guided: ModelFn, unguided: ModelFn) -> ModelFn:
  """`guided` at steps where any row is inside the guidance interval, the cheaper `unguided` elsewhere (one
  compiled branch each); `guided` alone, with no branch, when the interval holds every step."""
  if g.interval[0] <= 0.0 and g.interval[1] >= 1.0:
    return guided
  timestep_map = jnp.asarray(g.diffusion.timestep_map)

  def fn(x: jax.Array, t: jax.Array) -> jax.Array:
    any_guided = jnp.any(guidance_active(timestep_map[t], g.num_timesteps, g.interval))
    return jax.lax.cond(any_guided, guided, unguided, x, t)

  return fn


def classifier_free_model_fn(g: GuidanceInputs) -> ModelFn:
  """ε̃ = ε_u + s (ε_c − ε_u) from one forward pass on 2B rows; v from the conditional half. Outside the
  guidance interval the scale is 1, and a step at which no row is guided runs the conditional rows alone
  (B rows: half the work)."""

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    c = x.shape[-1]
    cond, uncond = cfg_halves(g, x, t)
    eps = uncond[..., :c] + guided_scales(g, t, x.ndim, cond.dtype) * (cond[..., :c] - uncond[..., :c])
    return jnp.concatenate([eps, cond[..., c:]], axis=-1)

  return only_where_guided(g, guided, conditional_rows_fn(g))


def cfg_halves(g: GuidanceInputs, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The network's outputs on the conditional and unconditional rows, ([B, ...], [B, ...]), from one forward
  pass on 2B rows that share x_t."""
  out = g.denoise(jnp.repeat(x, 2, axis=0), jnp.repeat(t, 2))
  out = out.reshape(x.shape[0], 2, *out.shape[1:])
  return out[:, 0], out[:, 1]


def conditional_rows_fn(g: GuidanceInputs) -> ModelFn:
  """The conditional rows of the interleaved text alone: B rows, the steps outside the guidance interval."""
  return lambda x, t: g.denoise(x, t, rows=slice(0, None, 2))


def projected_update(delta: jax.Array, along: jax.Array, eta: float, norm_threshold: float) -> jax.Array:
  """APG's update (Sadat et al. 2024, arXiv:2410.02416, eqs. 7-9 and 11, per sample over all pixels): Δ
  rescaled to norm ≤ r (r = norm_threshold > 0), split into Δ∥ along `along` and Δ⊥ = Δ − Δ∥, recombined as
  Δ⊥ + η Δ∥. η = 1 with r = 0 is Δ itself (classifier-free guidance)."""
  axes = tuple(range(1, delta.ndim))

  def norm(v):
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))

  if norm_threshold > 0:
    delta = delta * jnp.minimum(1.0, norm_threshold / jnp.maximum(norm(delta), 1e-12))
  unit = along / jnp.maximum(norm(along), 1e-12)
  parallel = jnp.sum(delta * unit, axis=axes, keepdims=True) * unit
  return delta - parallel + eta * parallel


def adaptive_projected_model_fn(g: GuidanceInputs) -> ModelFn:
  """Adaptive projected guidance (Sadat et al. 2024, arXiv:2410.02416, eq. 12 without momentum): on the
  denoised predictions, x̃_0 = x̂_0(c) + (s − 1) u with u = `projected_update`(x̂_0(c) − x̂_0(∅), x̂_0(c)), as ε:
  ε̃ = ε_c − √(ᾱ_t / (1 − ᾱ_t)) (s − 1) u (exactly ε_c at s = 1); v from the conditional half. The paper's
  reverse momentum (β < 0) is left out: it needs state carried across steps, and the sampler's model
  functions see one step. Outside the guidance interval the conditional rows run alone, as in CFG."""

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    c = x.shape[-1]
    cond, uncond = cfg_halves(g, x, t)
    x0_c = g.diffusion.predict_xstart_from_eps(x, t, cond[..., :c])
    x0_u = g.diffusion.predict_xstart_from_eps(x, t, uncond[..., :c])
    update = projected_update(x0_c - x0_u, x0_c, g.apg_eta, g.apg_norm_threshold)
    abar = g.diffusion.alphas_cumprod  # float64: the ratio is formed before the cast to float32.
    x0_to_eps = extract(np.sqrt(abar / (1.0 - abar)), t, x.ndim)
    eps = cond[..., :c] - x0_to_eps * (guided_scales(g, t, x.ndim, cond.dtype) - 1.0) * update
    return jnp.concatenate([eps, cond[..., c:]], axis=-1)

  return only_where_guided(g, guided, conditional_rows_fn(g))


def autoguidance_model_fn(g: GuidanceInputs) -> ModelFn:
  """Autoguidance (Karras et al. 2024, arXiv:2406.02507, eq. 2 written for ε): ε̃ = ε_g + s (ε_m − ε_g), the
  model m and its guide g (a weaker version of it, `GuidanceInputs.params["guide"]`) both on the prompt, each
  with its own text encoding; v from the model. s = 1 is the model alone, s = 0 the guide alone. Outside the
  guidance interval the model runs alone."""
  guide_text = g.encode("guide")

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    c = x.shape[-1]
    model, guide = g.denoise(x, t), g.denoise(x, t, params="guide", text=guide_text)
    eps = guide[..., :c] + guided_scales(g, t, x.ndim, model.dtype) * (model[..., :c] - guide[..., :c])
    return jnp.concatenate([eps, model[..., c:]], axis=-1)

  return only_where_guided(g, guided, g.denoise)


def conditional_model_fn(g: GuidanceInputs) -> ModelFn:
  """The conditional network alone: one forward pass per sample (glide-text2im's upsampler); scales unused."""
  return g.denoise


def pack_clip_rows(tokens: np.ndarray, mask: np.ndarray, clip_tokens: np.ndarray,
                   clip_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The sampler's prompt rows for CLIP guidance: [model tokens | CLIP tokens] [B, L + L_clip], and the mask
  [model mask | CLIP positions < length], so that batching and sharding treat them as any prompt rows."""
  clip_mask = np.arange(clip_tokens.shape[1])[None, :] < np.asarray(clip_len)[:, None]
  return (np.concatenate([tokens, clip_tokens.astype(tokens.dtype)], axis=1),
          np.concatenate([mask, clip_mask.astype(mask.dtype)], axis=1))


def split_clip_rows(tokens: jax.Array, mask: jax.Array, text_ctx: int) -> tuple[tuple[jax.Array, jax.Array],
                                                                               tuple[jax.Array, jax.Array]]:
  """`pack_clip_rows` undone: ((model tokens, mask), (CLIP tokens, lengths))."""
  clip_len = jnp.sum(mask[:, text_ctx:].astype(jnp.int32), axis=1)
  return (tokens[:, :text_ctx], mask[:, :text_ctx]), (tokens[:, text_ctx:], clip_len)


def clip_cond_fn(g: GuidanceInputs) -> CondFn:
  """s ∇_{x_t} (logit_scale · ⟨f(x_t, t), g(c)⟩), f and g the noised CLIP's normalised image and text
  embeddings (GLIDE §2.4; glide-text2im's `CLIPModel.cond_fn`) at the original timestep of each respaced step,
  s the row's guidance scale inside the guidance interval and 0 outside it. The prompts' embeddings are
  computed once per sampler call."""
  params = g.params["clip"]
  text = text_embeddings(g.clip_config, params, *g.clip_text)
  timestep_map = jnp.asarray(g.diffusion.timestep_map)

  def cond_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    original = timestep_map[t]
    active = guidance_active(original, g.num_timesteps, g.interval)
    scale = jnp.where(active, g.scales, 0.0).reshape(-1, *([1] * (x.ndim - 1)))
    if g.interval[0] <= 0.0 and g.interval[1] >= 1.0:
      return clip_guidance_grad(g.clip_config, params, x, original, text, scale)
    return jax.lax.cond(jnp.any(active), lambda x: clip_guidance_grad(g.clip_config, params, x, original, text, scale),
                        jnp.zeros_like, x)  # No CLIP pass at the steps outside the interval.

  return cond_fn


@dataclasses.dataclass(frozen=True)
class GuidanceRule:
  text_rows: Callable[[jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]  # (tokens, mask, pad_id) → rows
  model_fn: Callable[[GuidanceInputs], ModelFn]
  passes_when_guided: int = 2  # Forward passes per sample at a guided step (1 at the others).
  cond_fn: Optional[Callable[[GuidanceInputs], CondFn]] = None  # A gradient that moves each step (CLIP's).


# The rules config.sample.guidance may name (the config validator reads this table's keys).
GUIDANCE: dict[str, GuidanceRule] = {
    "classifier_free": GuidanceRule(with_empty_prompt, classifier_free_model_fn),
    # Reads config.sample.apg_eta and apg_norm_threshold.
    "adaptive_projected": GuidanceRule(with_empty_prompt, adaptive_projected_model_fn),
    # Needs the guide's parameters: sampler.bind(params, guide=guide_params).
    "autoguidance": GuidanceRule(lambda tokens, mask, pad_id: (tokens, mask), autoguidance_model_fn),
    "none": GuidanceRule(lambda tokens, mask, pad_id: (tokens, mask), conditional_model_fn, passes_when_guided=1),
    # Needs a noised CLIP: sampler.bind(params, clip=clip_params), prompts packed by pack_clip_rows.
    "clip": GuidanceRule(lambda tokens, mask, pad_id: (tokens, mask), conditional_model_fn, passes_when_guided=1,
                         cond_fn=clip_cond_fn),
}
