"""The update's gradient accumulation (train.microbatches) against separately computed microbatches."""

import functools

import jax
import numpy as np

from configs import tiny
from glide_jax.config import num_microbatches
from glide_jax.experiment import Experiment
from glide_jax.train.step import loss_and_grads, loss_fn, split_microbatches


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
