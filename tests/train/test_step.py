"""The update's gradient accumulation (train.microbatches) against separately computed microbatches; the
learning-rate schedules; min-SNR-γ in the training loss; the text encoder's own learning rate."""

import functools

import jax
import numpy as np
import pytest

from configs import tiny
from glide_jax.config import num_microbatches
from glide_jax.experiment import Experiment
from glide_jax.train.step import (
  apply_gradients,
  init_state_from_params,
  learning_rate_schedule,
  loss_and_grads,
  loss_fn,
  make_optimizer,
  split_microbatches,
)


def test_microbatches_are_strided_rows():
  batch = {"x": np.arange(8)[:, None] * np.ones((1, 3))}
  parts = split_microbatches(batch, 2)["x"]
  assert parts.shape == (2, 4, 3)
  np.testing.assert_array_equal(parts[0, :, 0], [0, 2, 4, 6])
  np.testing.assert_array_equal(parts[1, :, 0], [1, 3, 5, 7])


def test_microbatches_accumulate_the_mean_loss_and_gradient():
  config = tiny.get_config()
  config.train.batch_size = 8
  config.train.microbatch_size = 4
  exp = Experiment(config)
  params = exp.init_fn().params
  batch = jax.tree_util.tree_map(np.asarray, exp.batch_source()(0))
  rng = jax.random.key(7)
  kwargs = dict(model=exp.model, diffusion=exp.diffusion, p_uncond=0.5, pad_id=exp.tokenizer.pad_id)
  microbatches = num_microbatches(config.train)
  assert microbatches == 2
  (loss, metrics), grads = jax.jit(functools.partial(loss_and_grads, microbatches=microbatches, **kwargs))(
      params, batch, rng)

  grad_fn = jax.jit(jax.value_and_grad(functools.partial(loss_fn, **kwargs), has_aux=True))
  parts = split_microbatches(batch, 2)
  separate = [grad_fn(params, batch=jax.tree_util.tree_map(lambda x: x[i], parts), rng=jax.random.fold_in(rng, i))
              for i in range(2)]
  np.testing.assert_allclose(loss, np.mean([s[0][0] for s in separate]), rtol=1e-6)
  np.testing.assert_allclose(metrics["mse"], np.mean([s[0][1]["mse"] for s in separate]), rtol=1e-6)
  expected = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, separate[0][1], separate[1][1])
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # It is not the one-pass gradient of the whole batch with the same key (each microbatch has its own draws).
  (whole_loss, _), _ = grad_fn(params, batch=batch, rng=rng)
  assert abs(float(whole_loss) - float(loss)) > 1e-6


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_schedule_warms_up_then_decays_to_the_end_factor(warmup):
  config = tiny.get_config()
  t = config.train
  t.learning_rate, t.num_steps, t.warmup_steps, t.lr_schedule, t.lr_end_factor = 1e-3, 110, warmup, "cosine", 0.1
  lr = learning_rate_schedule(config)
  if warmup:
    np.testing.assert_allclose([lr(0), lr(5)], [0.0, 5e-4], rtol=1e-6)
  np.testing.assert_allclose(lr(warmup), 1e-3, rtol=1e-6)
  # Half-way through the decay: lr · (end + (1 − end)(1 + cos(π/2))/2) = lr · 0.55.
  middle = warmup + (110 - warmup) // 2
  np.testing.assert_allclose(lr(middle), 1e-3 * 0.55, rtol=1e-6)
  np.testing.assert_allclose([lr(110), lr(500)], [1e-4, 1e-4], rtol=1e-6)
  values = [float(lr(s)) for s in range(warmup, 111)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule_is_the_default():
  config = tiny.get_config()
  config.train.learning_rate, config.train.warmup_steps = 2e-4, 4
  lr = learning_rate_schedule(config)
  np.testing.assert_allclose([lr(0), lr(2), lr(4), lr(10_000)], [0.0, 1e-4, 2e-4, 2e-4], rtol=1e-6)


def test_min_snr_gamma_changes_the_loss_not_the_reported_mse():
  config = tiny.get_config()
  exp = Experiment(config)
  params = exp.init_fn().params
  batch = jax.tree_util.tree_map(np.asarray, exp.batch_source()(0))
  kwargs = dict(model=exp.model, diffusion=exp.diffusion, p_uncond=0.2, pad_id=exp.tokenizer.pad_id)
  loss = jax.jit(functools.partial(loss_fn, **kwargs), static_argnames="min_snr_gamma")
  plain, weighted = (loss(params, batch=batch, rng=jax.random.key(3), min_snr_gamma=g) for g in (0.0, 5.0))
  np.testing.assert_array_equal(weighted[1]["mse"], plain[1]["mse"])
  np.testing.assert_array_equal(weighted[1]["vb"], plain[1]["vb"])
  assert float(weighted[0]) < float(plain[0])  # Weights are <= 1, and < 1 on the batch's low-noise examples.
  np.testing.assert_allclose(plain[0], plain[1]["mse"] + plain[1]["vb"], rtol=1e-6)


def test_the_text_encoder_learning_rate_scales_its_updates_only():
  config = tiny.get_config()
  config.train.learning_rate, config.train.warmup_steps = 1e-2, 0
  optimizer = make_optimizer(config)
  params = {"text_encoder": {"w": np.ones((3,), np.float32)}, "unet": {"w": np.ones((2, 2), np.float32)}}
  grads = {"text_encoder": {"w": np.array([0.3, -0.2, 0.1], np.float32)},
           "unet": {"w": np.array([[0.5, -0.1], [0.2, 0.4]], np.float32)}}
  states = {}
  for scale in (1.0, 0.5, 0.0):
    state, _ = apply_gradients(init_state_from_params(optimizer, params), np.float32(1.0), {}, grads, optimizer,
                               config, text_encoder_lr_scale=scale)
    states[scale] = state
  full, half, frozen = (states[s] for s in (1.0, 0.5, 0.0))
  moved = full.params["text_encoder"]["w"] - 1.0
  assert np.all(np.abs(moved) > 1e-3)  # Adam's first step: lr · sign(g).
  np.testing.assert_allclose(half.params["text_encoder"]["w"] - 1.0, 0.5 * moved, rtol=1e-6)
  np.testing.assert_array_equal(half.params["unet"]["w"], full.params["unet"]["w"])
  for got, want in zip(jax.tree_util.tree_leaves(half.opt_state), jax.tree_util.tree_leaves(full.opt_state)):
    np.testing.assert_array_equal(got, want)  # The optimizer state (so a resume's layout) is the same.
  # Frozen: the encoder's parameters, EMA and Adam moments are passed through bit for bit (its gradient
  # counts nowhere); the UNet's update is the full run's, as its gradient norm is under the clip here.
  start = init_state_from_params(optimizer, params)
  np.testing.assert_array_equal(frozen.params["unet"]["w"], full.params["unet"]["w"])
  for tree in ("params", "ema_params"):
    np.testing.assert_array_equal(getattr(frozen, tree)["text_encoder"]["w"], params["text_encoder"]["w"])
  assert not np.array_equal(full.ema_params["text_encoder"]["w"], params["text_encoder"]["w"])
  adam, full_adam = frozen.opt_state[1][0], full.opt_state[1][0]
  for moment in ("mu", "nu"):
    np.testing.assert_array_equal(getattr(adam, moment)["text_encoder"]["w"],
                                  getattr(start.opt_state[1][0], moment)["text_encoder"]["w"])
    assert np.any(getattr(full_adam, moment)["text_encoder"]["w"] != 0)
    np.testing.assert_array_equal(getattr(adam, moment)["unet"]["w"], getattr(full_adam, moment)["unet"]["w"])
  assert jax.tree_util.tree_structure(frozen.opt_state) == jax.tree_util.tree_structure(full.opt_state)
