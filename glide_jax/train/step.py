"""The training state and the jitted update: hybrid loss with conditioning dropout, Adam, EMA."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from glide_jax import sharding as sharding_lib
from glide_jax.config import num_microbatches
from glide_jax.diffusion import GaussianDiffusion, hybrid_loss, min_snr_weight
from glide_jax.editing.masks import random_known_masks
from glide_jax.model import Text2ImUNet, init_params
from glide_jax.model.text2im import downsample
from glide_jax.train.lr_schedules import LR_SCHEDULES

INPAINT_MASK_STREAM = 0x3A5C  # fold_in tag of the training masks' randomness within a step.


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # Consecutive steps skipped for a non-finite loss or gradient.


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """An optional linear warm-up from 0, then the schedule config.train.lr_schedule names (`LR_SCHEDULES`)."""
  t = config.train
  after_warmup = LR_SCHEDULES[t.lr_schedule](t)
  if t.warmup_steps > 0:
    warmup = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
    return optax.join_schedules([warmup, after_warmup], [t.warmup_steps])
  return after_warmup


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip by global norm, then Adam (the reference lesson: lr 2e-4, betas (0.9, 0.99), clip 1.0)."""
  t = config.train
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.adam(learning_rate_schedule(config), b1=t.adam_b1, b2=t.adam_b2))


def init_state_from_params(optimizer: optax.GradientTransformation, params: Any) -> TrainState:
  """Step 0 with `params` (also as the EMA) and a fresh optimizer state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=optimizer.init(params), nonfinite_streak=jnp.zeros((), jnp.int32))


def init_train_state(model: Text2ImUNet, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return init_state_from_params(optimizer, init_params(model, rng))


def drop_conditioning(rng: jax.Array, tokens: jax.Array, mask: jax.Array, p_uncond: float,
                      pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Replaces each example's prompt by the empty prompt (all pad, mask False) with probability p_uncond."""
  drop = jax.random.bernoulli(rng, p_uncond, (tokens.shape[0],))
  tokens = jnp.where(drop[:, None], jnp.asarray(pad_id, tokens.dtype), tokens)
  mask = jnp.where(drop[:, None], False, mask)
  return tokens, mask


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): a short warm-up so early averages do not cling to the init."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def known_masks(rng: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
  """An inpainting model's training masks [B, H, W, 1]: random (`random_known_masks`, from their own stream so
  the base model's draws stay as they are), except that an edit composite keeps the half its fill was chosen
  for, batch["known"] (`editing.composites`)."""
  images = batch["images"]
  known = random_known_masks(jax.random.fold_in(rng, INPAINT_MASK_STREAM), images.shape[0], images.shape[1])
  if "composite" in batch:
    known = jnp.where(batch["composite"][:, None, None, None], batch["known"], known)
  return known


def loss_fn(params: Any, model: Text2ImUNet, diffusion: GaussianDiffusion, batch: dict[str, jax.Array],
            rng: jax.Array, p_uncond: float, pad_id: int,
            min_snr_gamma: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean hybrid loss of a batch: uniform t, ε ~ N(0, I), L_simple weighted by min-SNR-γ when γ > 0,
  prompts dropped with probability p_uncond; an
  inpainting model also sees each example's known part under a random mask (GLIDE's fine-tuning; an edit
  composite under its own, batch["known"]), an upsampler the example downsampled to its low resolution."""
  x_start = batch["images"]
  t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
  t = jax.random.randint(t_rng, (x_start.shape[0],), 0, diffusion.num_timesteps)
  noise = jax.random.normal(noise_rng, x_start.shape, x_start.dtype)
  x_t = diffusion.q_sample(x_start, t, noise)
  tokens, mask = drop_conditioning(drop_rng, batch["tokens"], batch["mask"], p_uncond, pad_id)
  model_t = jnp.asarray(diffusion.timestep_map)[t]
  extra_inputs = {}
  if model.config.inpaint:
    extra_inputs = {"inpaint_image": x_start, "inpaint_mask": known_masks(rng, batch)}
  if model.config.super_res:
    extra_inputs["low_res"] = downsample(x_start, model.config.low_res_size)
  output = model.apply({"params": params}, x_t, model_t, tokens, mask, train=True, rngs={"dropout": dropout_rng},
                       **extra_inputs)
  terms = hybrid_loss(diffusion, output, x_start, x_t, t, noise, min_snr_weight(diffusion, t, min_snr_gamma))
  metrics = {k: jnp.mean(v) for k, v in terms.items()}
  return metrics["loss"], metrics


def split_microbatches(batch: dict[str, jax.Array], microbatches: int) -> dict[str, jax.Array]:
  """[B, ...] → [microbatches, B / microbatches, ...], microbatch i holding rows i, i + k, i + 2k, ...

  Strided rather than contiguous, so each device's contiguous block of rows holds its part of every
  microbatch and the split moves no data between devices.
  """
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)
  return jax.tree_util.tree_map(split, batch)


def loss_and_grads(params: Any, batch: dict[str, jax.Array], rng: jax.Array, microbatches: int,
                   **loss_kwargs) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
  """((loss, metrics), gradients) of the batch; with microbatches > 1, averaged over that many
  microbatches (gradient accumulation). Microbatch i draws its randomness from fold_in(rng, i); every
  loss term is a mean, so the mean over equal microbatches is the batch's mean. On CPU, microbatches
  of about 8 examples per device run faster than one large batch (their activations stay in cache).
  """
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, **loss_kwargs), has_aux=True)
  if microbatches == 1:
    return grad_fn(params, batch=batch, rng=rng)

  # A Python loop (unrolled in the compiled step): XLA's CPU backend does not hand convolutions inside a
  # loop body to its fast kernels: as a lax.scan the step is many times slower (docs/benchmarks.md).
  parts = split_microbatches(batch, microbatches)
  total = None
  for i in range(microbatches):
    result = grad_fn(params, batch=jax.tree_util.tree_map(lambda x: x[i], parts),  # noqa: B023
                     rng=jax.random.fold_in(rng, i))
    total = result if total is None else jax.tree_util.tree_map(jnp.add, total, result)
  return jax.tree_util.tree_map(lambda x: x / microbatches, total)


def train_step(state: TrainState, batch: dict[str, jax.Array], base_rng: jax.Array, *, model: Text2ImUNet,
               diffusion: GaussianDiffusion, optimizer: optax.GradientTransformation,
               config: ml_collections.ConfigDict, pad_id: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update. The step's randomness is fold_in(base_rng, step), so it never depends on history; a
  non-finite step is skipped (`apply_gradients`)."""
  rng = jax.random.fold_in(base_rng, state.step)
  (loss, metrics), grads = loss_and_grads(state.params, batch, rng, num_microbatches(config.train), model=model,
                                         diffusion=diffusion, p_uncond=config.train.p_uncond, pad_id=pad_id,
                                         min_snr_gamma=config.train.min_snr_gamma)
  return apply_gradients(state, loss, metrics, grads, optimizer, config,
                         text_encoder_lr_scale=config.train.text_encoder_lr_scale)


def scale_text_encoder_updates(updates: Any, scale: float) -> Any:
  """The optimizer's updates with the text encoder's times `scale`: a learning rate of its own that leaves the
  optimizer state as it is, so a run can resume with another scale (scale 0 freezes it: `apply_gradients`)."""
  if scale == 1.0:
    return updates
  return {**updates, "text_encoder": jax.tree_util.tree_map(lambda u: u * scale, updates["text_encoder"])}


def _in_text_encoder(path: tuple) -> bool:
  return any(isinstance(k, jax.tree_util.DictKey) and k.key == "text_encoder" for k in path)


def keep_text_encoder(new: Any, old: Any) -> Any:
  """`new` with every leaf under a "text_encoder" key taken from `old`, at any depth: the parameters, their
  EMA and Adam's moments of that name alike, so one call freezes the encoder in each."""
  return jax.tree_util.tree_map_with_path(lambda path, n, o: o if _in_text_encoder(path) else n, new, old)


def apply_gradients(state: TrainState, loss: jax.Array, metrics: dict[str, jax.Array], grads: Any,
                    optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    text_encoder_lr_scale: float = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer's update and the EMA's, unless the loss or gradient is not finite: then only the step
  counter and the streak of such steps change (metrics["nonfinite"] = 1). Any model's step ends here; a
  diffusion model's text encoder moves `text_encoder_lr_scale` times as far as Adam says.

  At scale 0 the encoder is frozen outright: its gradient counts in neither the clipping norm nor Adam, and
  its parameters, their EMA and their Adam moments are passed through as they are. Nothing then reads its
  gradient, so XLA drops that computation and the encoder's share of the update costs nothing (with GPT-2's
  50,257-token embedding, most of a small model's parameters)."""
  frozen = text_encoder_lr_scale == 0.0
  if frozen:
    grads = {**grads, "text_encoder": jax.tree_util.tree_map(jnp.zeros_like, grads["text_encoder"])}
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  if not frozen:
    updates = scale_text_encoder_updates(updates, text_encoder_lr_scale)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, config.train.ema_decay)
  ema_params = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  if frozen:
    params, ema_params, opt_state = (keep_text_encoder(new, old) for new, old in (
        (params, state.params), (ema_params, state.ema_params), (opt_state, state.opt_state)))
  keep_if_bad = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  metrics["grad_norm"] = grad_norm
  metrics["learning_rate"] = learning_rate_schedule(config)(state.step)
  metrics["nonfinite"] = (~finite).astype(jnp.float32)
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
  metrics["nonfinite_streak"] = streak
  new_state = TrainState(
      step=state.step + 1, params=keep_if_bad(params, state.params),
      ema_params=keep_if_bad(ema_params, state.ema_params), opt_state=keep_if_bad(opt_state, state.opt_state),
      nonfinite_streak=streak)
  return new_state, metrics


def make_sharded_train_step(mesh: Mesh, state_sharding: Any, **static) -> Callable:
  """train_step jitted over the mesh: batch split over the batch axes, state donated and laid out as given."""
  return jax.jit(
      functools.partial(train_step, **static),
      in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)),
      out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))


class ShardedInit(NamedTuple):
  """A model's training-state initialiser over a mesh, with what it makes: the state's shardings and shapes."""
  init: Callable[[], TrainState]  # Jitted: the state made directly in its shardings.
  shardings: Any
  shapes: Any  # ShapeDtypeStructs (no shardings): traced once here, so nothing traces the initialiser again.


def make_sharded_init(mesh: Mesh, model: Text2ImUNet, optimizer: optax.GradientTransformation,
                      rng: jax.Array) -> ShardedInit:
  """The diffusion model's training state, initialised from `rng` over `mesh` (`shard_init`)."""
  return shard_init(mesh, functools.partial(init_train_state, model, optimizer, rng))


def shard_init(mesh: Mesh, init: Callable[[], TrainState]) -> ShardedInit:
  """`init` jitted to produce any model's TrainState directly in its shardings over `mesh`."""
  shapes = jax.eval_shape(init)
  shardings = sharding_lib.state_shardings(mesh, shapes)
  return ShardedInit(jax.jit(init, out_shardings=shardings), shardings, shapes)
