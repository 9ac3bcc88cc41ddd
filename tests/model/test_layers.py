"""Shared layers: GroupNorm (both ways of taking its moments) against flax's nn.GroupNorm and a float64
transcription."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from glide_jax.model.layers import GroupNorm32, attention, fused_attention, group_norm


def np_group_norm(x, scale, bias, groups, eps):
  n, c = x.shape[0], x.shape[-1]
  xg = x.reshape(n, -1, groups, c // groups).astype(np.float64)
  mean = xg.mean(axis=(1, 3), keepdims=True)
  var = xg.var(axis=(1, 3), keepdims=True)
  return (((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias)


@pytest.mark.parametrize("impl", ["dot", "reduce"])
@pytest.mark.parametrize("shape,groups", [((3, 8, 8, 96), 32), ((2, 4, 4, 384), 32), ((2, 5, 6, 16), 4),
                                          ((4, 7, 12), 3)])
def test_group_norm_matches_flax_and_float64(shape, groups, impl):
  rng = np.random.default_rng(0)
  # An offset mean and uneven scales per channel, as after a convolution.
  x = (rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1]) + 2.0).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  ours = np.asarray(jax.jit(group_norm, static_argnums=(3, 4, 5))(x, scale, bias, groups, 1e-5, impl))
  np.testing.assert_allclose(ours, np_group_norm(x, scale, bias, groups, 1e-5), rtol=1e-4, atol=2e-5)
  flax_norm = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  theirs = flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("impl", ["dot", "reduce"])
def test_group_norm_gradients_match_flax(impl):
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(2, 6, 6, 96)) + 1.0).astype(np.float32)
  weights = rng.normal(size=x.shape).astype(np.float32)
  params = {"scale": rng.uniform(0.5, 1.5, 96).astype(np.float32), "bias": rng.normal(size=96).astype(np.float32)}
  loss = lambda p, x: (group_norm(x, p["scale"], p["bias"], 32, 1e-5, impl) * weights).sum()  # noqa: E731
  ours = jax.grad(loss, (0, 1))(params, x)
  flax_norm = nn.GroupNorm(num_groups=32, epsilon=1e-5)
  theirs = jax.grad(lambda p, x: (flax_norm.apply({"params": p}, x) * weights).sum(), (0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_group_norm_keeps_flax_parameter_names_and_init():
  params = GroupNorm32(8).init(jax.random.key(0), np.zeros((1, 4, 4, 16), np.float32))["params"]
  assert jax.tree_util.tree_map(np.shape, params) == {"norm": {"scale": (16,), "bias": (16,)}}
  np.testing.assert_array_equal(params["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(params["norm"]["bias"], 0.0)


def test_the_fused_attention_call_computes_glide_attention():
  """The cuDNN path's call (jax.nn.dot_product_attention: layout, d^-1/2 scale, head concatenation), run by XLA
  here, equals GLIDE's attention; more keys than queries, as with the text tokens prepended."""
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, n, 3, 8)).astype(np.float32) for n in (5, 9, 9))
  want = np.asarray(attention(q, k, v))
  assert want.shape == (2, 5, 24)
  np.testing.assert_allclose(np.asarray(fused_attention(q, k, v, "xla")), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(attention(q, k, v, "xla")), want)


def test_causal_attention_reads_each_key_up_to_its_own_position():
  """attention(causal=True): query i attends to keys 0..i (the text encoder's model.xf_causal), so the first
  query returns the first value, and the fused call's mask is the same."""
  rng = np.random.default_rng(4)
  q, k, v = (rng.normal(size=(2, 6, 3, 8)).astype(np.float32) for _ in range(3))
  got = np.asarray(attention(q, k, v, causal=True))
  np.testing.assert_allclose(got[:, 0], v[:, 0].reshape(2, -1), rtol=1e-6)
  for i in range(6):  # Keys after i change nothing before them.
    np.testing.assert_allclose(got[:, i], np.asarray(attention(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1]))[:, 0],
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(fused_attention(q, k, v, "xla", causal=True)), got, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(attention(q, k, v)) - got).max() > 1e-2
