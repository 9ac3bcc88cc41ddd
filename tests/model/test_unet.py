"""The ADM UNet (GLIDE_REFERENCE.md §2): timestep embedding, ResBlock and AttentionBlock against float64
numpy transcriptions of glide-text2im's `unet.py` (NCHW, PyTorch weight layouts), and the block topology."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glide_jax.model.layers import GroupNorm32, layer_norm
from glide_jax.model.model_config import ModelConfig
from glide_jax.model.unet import AttentionBlock, ResBlock, UNet, timestep_embedding


def make_unet(image_size, out_channels, attention_ds, model_channels, num_res_blocks, channel_mult=(1, 2, 2, 2),
              num_head_channels=64, num_groups=32, resblock_updown=False, conv_resample=True):
  """A UNet for out_channels // 2 input channels (ε and v out), attention at the given downsampling rates."""
  return UNet(ModelConfig(
      image_size=image_size, in_channels=out_channels // 2, model_channels=model_channels,
      channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
      attention_resolutions=tuple(image_size // ds for ds in attention_ds), num_head_channels=num_head_channels,
      num_groups=num_groups, dropout=0.0, learn_sigma=True, resblock_updown=resblock_updown,
      conv_resample=conv_resample, vocab_size=1, text_ctx=1, xf_width=1, xf_layers=0, xf_heads=1))


def random_params(module, *args, seed=0, **kwargs):
  """Random values (not the init) in the module's parameter shapes; norm scales around 1."""
  shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs), jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(seed)

  def value(path, s):
    name = jax.tree_util.keystr(path)
    base = 1.0 if name.endswith("['scale']") else 0.0
    return (base + 0.3 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(value, shapes)


def as64(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# --- numpy transcription of glide-text2im (NCHW, torch layouts) ------------------------------------
def torch_conv_weight(kernel):
  """Flax [kh, kw, I, O] → torch Conv2d [O, I, kh, kw]."""
  return np.transpose(kernel, (3, 2, 0, 1))


def np_conv2d(x, weight, bias, padding):
  _, _, kh, kw = weight.shape
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  h, w = x.shape[2] + 2 * padding - kh + 1, x.shape[3] + 2 * padding - kw + 1
  out = sum(np.einsum("bihw,oi->bohw", xp[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
            for dy in range(kh) for dx in range(kw))
  return out + bias[None, :, None, None]


def np_conv1d(x, weight, bias):
  """torch Conv1d with kernel 1: x [B, I, L], weight [O, I]."""
  return np.einsum("bil,oi->bol", x, weight) + bias[None, :, None]


def np_group_norm(x, p, groups, swish=False):
  b, c = x.shape[:2]
  g = x.reshape(b, groups, -1)
  g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
  y = g.reshape(x.shape) * p["norm"]["scale"].reshape(1, c, 1, 1) + p["norm"]["bias"].reshape(1, c, 1, 1)
  return y * (1 / (1 + np.exp(-y))) if swish else y


def silu(x):
  return x / (1 + np.exp(-x))


def np_resblock(p, x, emb, out_ch, groups, up=False, down=False):
  """glide-text2im ResBlock with use_scale_shift_norm=True (NCHW)."""
  def resample(a):
    if up:
      return a.repeat(2, axis=2).repeat(2, axis=3)
    if down:
      b, c, hh, ww = a.shape
      return a.reshape(b, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
    return a

  h = np_group_norm(x, p["in_norm"], groups, swish=True)
  h, x = resample(h), resample(x)
  h = np_conv2d(h, torch_conv_weight(p["in_conv"]["kernel"]), p["in_conv"]["bias"], 1)
  emb_out = silu(emb) @ p["emb_layers"]["kernel"] + p["emb_layers"]["bias"]  # [B, 2·out]
  scale, shift = emb_out[:, :out_ch, None, None], emb_out[:, out_ch:, None, None]  # th.chunk(·, 2, dim=1)
  h = np_group_norm(h, p["out_norm"], groups) * (1 + scale) + shift
  h = np_conv2d(silu(h), torch_conv_weight(p["out_conv"]["kernel"]), p["out_conv"]["bias"], 1)
  if "skip_connection" in p:
    x = np_conv2d(x, torch_conv_weight(p["skip_connection"]["kernel"]), p["skip_connection"]["bias"], 0)
  return x + h


def np_attention_block(p, x, encoder_out, n_heads, groups):
  """glide-text2im AttentionBlock + QKVAttention (NCL); encoder_out is xf_out in NLC, as the model holds it."""
  b, c, hh, ww = x.shape
  qkv = np_conv1d(np_group_norm(x, p["norm"], groups).reshape(b, c, -1), p["qkv"]["kernel"].T, p["qkv"]["bias"])
  bs, width, length = qkv.shape
  ch = width // (3 * n_heads)
  qkv = qkv.reshape(bs * n_heads, ch * 3, length)
  q, k, v = qkv[:, :ch], qkv[:, ch:2 * ch], qkv[:, 2 * ch:]
  if encoder_out is not None:
    ekv = np_conv1d(np.transpose(encoder_out, (0, 2, 1)), p["encoder_kv"]["kernel"].T, p["encoder_kv"]["bias"])
    ekv = ekv.reshape(bs * n_heads, ch * 2, -1)
    ek, ev = ekv[:, :ch], ekv[:, ch:]
    k = np.concatenate([ek, k], axis=-1)
    v = np.concatenate([ev, v], axis=-1)
  scale = 1 / math.sqrt(math.sqrt(ch))
  weight = np.einsum("bct,bcs->bts", q * scale, k * scale)
  weight = np.exp(weight - weight.max(-1, keepdims=True))
  weight /= weight.sum(-1, keepdims=True)
  a = np.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
  h = np_conv1d(a, p["proj_out"]["kernel"].T, p["proj_out"]["bias"])
  return x + h.reshape(b, c, hh, ww)


def nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def nchw(a):
  return np.transpose(a, (0, 3, 1, 2))


# --- timestep embedding ----------------------------------------------------------------------------
def test_timestep_embedding_of_zero_is_cos_then_sin():
  emb = np.asarray(timestep_embedding(jnp.array([0]), 16))
  np.testing.assert_array_equal(emb, np.concatenate([np.ones((1, 8)), np.zeros((1, 8))], axis=1))


@pytest.mark.parametrize("dim", [16, 7])
def test_timestep_embedding_closed_form(dim):
  t = np.array([0, 1, 17, 500, 999])
  emb = np.asarray(timestep_embedding(jnp.asarray(t), dim))
  assert emb.shape == (5, dim) and emb.dtype == np.float32
  half = dim // 2
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)  # f_i = 10⁴^(−i/half)
  args = t[:, None].astype(np.float64) * freqs[None]
  np.testing.assert_allclose(emb[:, :half], np.cos(args), atol=2e-4)
  np.testing.assert_allclose(emb[:, half:2 * half], np.sin(args), atol=2e-4)
  if dim % 2:
    np.testing.assert_array_equal(emb[:, -1], 0.0)


# --- norms -------------------------------------------------------------------------------------------
def test_norms_use_pytorch_epsilon_in_float32():
  """GroupNorm32 and LayerNorm use eps = 1e-5 (flax's default is 1e-6), computed in float32."""
  rng = np.random.default_rng(0)
  x = (1e-3 * rng.normal(size=(2, 2, 2, 8))).astype(np.float32)  # Variance ~1e-6: eps dominates.
  gn = GroupNorm32(num_groups=2, swish=True)
  params = gn.init(jax.random.PRNGKey(0), x)
  got = gn.apply(params, x.astype(jnp.bfloat16))
  assert got.dtype == jnp.bfloat16  # Cast back to the input dtype.
  got = np.asarray(gn.apply(params, x))
  g = x.astype(np.float64).reshape(2, 4, 2, 4)  # NHWC with 2 groups of 4 channels.
  g = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5)
  np.testing.assert_allclose(got, silu(g.reshape(x.shape)), rtol=1e-4, atol=1e-6)
  ln = layer_norm("ln")
  y = np.asarray(ln.apply(ln.init(jax.random.PRNGKey(0), x), x))
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.astype(np.float64).var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-6)


def test_xf_proj_is_added_after_the_time_mlp():
  """emb = time_embed(sinusoid(t)) + xf_proj: swapping t while shifting xf_proj by the MLP difference is a no-op."""
  unet = make_unet(4, model_channels=8, out_channels=2, num_res_blocks=1, attention_ds=(2,), channel_mult=(1, 2),
                   num_head_channels=8, num_groups=4)
  rng = np.random.default_rng(6)
  x = np.repeat(rng.normal(size=(1, 4, 4, 1)).astype(np.float32), 3, axis=0)
  xf_out = np.repeat(rng.normal(size=(1, 3, 5)).astype(np.float32), 3, axis=0)
  params = random_params(unet, x, np.zeros(3, np.int32), xf_out, np.zeros((3, 32), np.float32), seed=7)

  def time_mlp(t):
    p = as64(params)
    h = timestep_embedding(jnp.asarray(t), 8)
    h = np.asarray(h, np.float64) @ p["time_embed_0"]["kernel"] + p["time_embed_0"]["bias"]
    return silu(h) @ p["time_embed_2"]["kernel"] + p["time_embed_2"]["bias"]

  xf_proj = rng.normal(size=(1, 32))
  t = np.array([10, 60, 60], np.int32)
  shifted = xf_proj + time_mlp([10]) - time_mlp([60])
  projs = np.concatenate([xf_proj, shifted, xf_proj]).astype(np.float32)
  out = np.asarray(jax.jit(lambda p, *a: unet.apply({"params": p}, *a))(params, x, t, xf_out, projs))
  np.testing.assert_allclose(out[1], out[0], rtol=1e-4, atol=1e-4)
  assert np.abs(out[2] - out[0]).max() > 1e-2


# --- ResBlock and AttentionBlock against glide-text2im ----------------------------------------------
@pytest.mark.parametrize("in_ch,out_ch,up,down", [(8, 8, False, False), (8, 16, False, False),
                                                  (16, 16, False, True), (16, 16, True, False)],
                         ids=["same", "wider", "down", "up"])
@pytest.mark.parametrize("norm_impl", ["dot", "reduce"])
def test_resblock_matches_glide(in_ch, out_ch, up, down, norm_impl):
  block = ResBlock(out_ch, dropout=0.0, num_groups=4, up=up, down=down, norm_impl=norm_impl)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, in_ch)).astype(np.float32)
  emb = rng.normal(size=(2, 12)).astype(np.float32)
  params = random_params(block, x, emb, train=False)
  assert ("skip_connection" in params) == (in_ch != out_ch)
  got = np.asarray(jax.jit(lambda p, x, e: block.apply({"params": p}, x, e, train=False))(params, x, emb))
  expected = np_resblock(as64(params), nchw(x).astype(np.float64), emb.astype(np.float64), out_ch, 4, up, down)
  assert got.shape == nhwc(expected).shape
  np.testing.assert_allclose(got, nhwc(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_text", [True, False])
@pytest.mark.parametrize("norm_impl", ["dot", "reduce"])
def test_attention_block_matches_glide(with_text, norm_impl):
  c, head_channels = 16, 4  # 4 heads of 4 channels.
  block = AttentionBlock(num_head_channels=head_channels, num_groups=4, norm_impl=norm_impl)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 3, c)).astype(np.float32)
  xf_out = rng.normal(size=(2, 5, 6)).astype(np.float32) if with_text else None
  params = random_params(block, x, xf_out, seed=3)
  assert ("encoder_kv" in params) == with_text
  apply = jax.jit(lambda p, x, xf: block.apply({"params": p}, x, xf))
  got = np.asarray(apply(params, x, xf_out))
  expected = np_attention_block(as64(params), nchw(x).astype(np.float64),
                                None if xf_out is None else xf_out.astype(np.float64), c // head_channels, 4)
  np.testing.assert_allclose(got, nhwc(expected), rtol=1e-4, atol=1e-4)
  if with_text:  # The image attends to the text: other text features, other output.
    other = (xf_out + rng.normal(size=xf_out.shape)).astype(np.float32)
    assert np.abs(np.asarray(apply(params, x, other)) - got).max() > 1e-3


def test_position_embedding_lets_attention_tell_places_apart():
  """GLIDE's attention block cannot tell image positions apart (shuffling the pixels shuffles its output);
  model.position_embedding adds a learned vector per position, zero when initialised."""
  c, hw = 16, 3
  plain = AttentionBlock(num_head_channels=4, num_groups=4)
  placed = AttentionBlock(num_head_channels=4, num_groups=4, position_embedding=True)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, hw, hw, c)).astype(np.float32)
  xf_out = rng.normal(size=(2, 5, 6)).astype(np.float32)
  params = random_params(plain, x, xf_out, seed=5)
  initial = placed.init(jax.random.PRNGKey(0), x, xf_out)["params"]
  assert initial["position_embedding"].shape == (hw * hw, c) and not np.any(initial["position_embedding"])
  embedding = rng.normal(size=(hw * hw, c)).astype(np.float32)
  out = {name: np.asarray(block.apply({"params": p}, x_in, xf_out))
         for name, block, p, x_in in (("plain", plain, params, x), ("zero", placed, {**params, "position_embedding":
                                      np.zeros((hw * hw, c), np.float32)}, x),
                                      ("placed", placed, {**params, "position_embedding": embedding}, x))}
  np.testing.assert_array_equal(out["zero"], out["plain"])
  order = rng.permutation(hw * hw)
  shuffle = lambda a: a.reshape(2, hw * hw, c)[:, order].reshape(2, hw, hw, c)  # noqa: E731
  shuffled = {"plain": np.asarray(plain.apply({"params": params}, shuffle(x), xf_out)),
              "placed": np.asarray(placed.apply({"params": {**params, "position_embedding": embedding}},
                                                shuffle(x), xf_out))}
  np.testing.assert_allclose(shuffled["plain"], shuffle(out["plain"]), atol=1e-5)
  assert np.abs(shuffled["placed"] - shuffle(out["placed"])).max() > 1e-2


# --- topology ----------------------------------------------------------------------------------------
def unet_param_shapes(image_size, in_ch=3, **kwargs):
  unet = make_unet(image_size, **kwargs)
  x = jnp.zeros((1, image_size, image_size, in_ch))
  xf = jnp.zeros((1, 4, 8))
  return jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32), xf,
                        jnp.zeros((1, 4 * kwargs["model_channels"])))["params"]


def is_attention(p):
  return set(p) == {"norm", "qkv", "encoder_kv", "proj_out"}


def is_resblock(p):
  return {"in_norm", "in_conv", "emb_layers", "out_norm", "out_conv"} <= set(p)


def test_glide_base_block_layout():
  """The base model's layout at 1/6 the width: channel_mult (1,2,3,4), 3 ResBlocks, attention at ds 2/4/8."""
  c = 32
  p = unet_param_shapes(64, model_channels=c, out_channels=6, num_res_blocks=3, attention_ds=(2, 4, 8),
                        channel_mult=(1, 2, 3, 4), num_head_channels=16, num_groups=8, resblock_updown=True)
  assert p["input_blocks_0"]["kernel"].shape == (3, 3, 3, c)
  assert p["time_embed_0"]["kernel"].shape == (c, 4 * c)
  assert p["time_embed_2"]["kernel"].shape == (4 * c, 4 * c)
  # Input side: 1-3 at 64 px, 4 down, 5-7 at 32 px (attention), 8 down, 9-11, 12 down, 13-15.
  for i in range(1, 16):
    assert is_resblock(p[f"input_blocks_{i}_0"])
    down = i in (4, 8, 12)
    assert ("skip_connection" in p[f"input_blocks_{i}_0"]) == (i in (5, 9, 13))
    assert (f"input_blocks_{i}_1" in p) == (i >= 5 and not down)
  assert "input_blocks_16_0" not in p
  # Middle: ResBlock, attention (12 heads' worth of channels at base scale), ResBlock.
  assert is_resblock(p["middle_block_0"]) and is_resblock(p["middle_block_2"])
  assert is_attention(p["middle_block_1"])
  assert p["middle_block_1"]["qkv"]["kernel"].shape == (4 * c, 12 * c)
  assert p["middle_block_1"]["encoder_kv"]["kernel"].shape == (8, 8 * c)
  # Output side: ResBlock input widths (base: 1536, 1536, 1536, 1344, ... / 192), up-ResBlocks at 3.2, 7.2, 11.2.
  widths = [8, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 2]
  outs = [4] * 4 + [3] * 4 + [2] * 4 + [1] * 4
  for i in range(16):
    assert p[f"output_blocks_{i}_0"]["in_conv"]["kernel"].shape == (3, 3, widths[i] * c, outs[i] * c)
    assert (f"output_blocks_{i}_1" in p and is_attention(p[f"output_blocks_{i}_1"])) == (i < 12)
    up = f"output_blocks_{i}_2"
    assert (up in p) == (i in (3, 7, 11))
    if up in p:
      assert is_resblock(p[up]) and "skip_connection" not in p[up]
    if i >= 12:
      assert f"output_blocks_{i}_1" not in p
  assert "output_blocks_16_0" not in p
  assert p["out_conv"]["kernel"].shape == (3, 3, c, 6)
  assert set(p["out_norm"]["norm"]) == {"scale", "bias"}


def test_tiny_attention_placement():
  """Attention exactly at the configured resolutions and in the middle (configs/tiny.py: 16 px, attention at 8)."""
  p = unet_param_shapes(16, in_ch=1, model_channels=32, out_channels=2, num_res_blocks=1, attention_ds=(2,),
                        channel_mult=(1, 2), num_head_channels=32, resblock_updown=False, conv_resample=False)
  attention = sorted(k for k, v in p.items() if isinstance(v, dict) and is_attention(v))
  assert attention == ["input_blocks_3_1", "middle_block_1", "output_blocks_0_1", "output_blocks_1_1"]
  # Parameter-free resampling: no module at the down/up positions.
  assert "input_blocks_2_0" not in p and "output_blocks_1_2" not in p


def test_attention_at_full_resolution_and_conv_resampling():
  p = unet_param_shapes(8, model_channels=32, out_channels=6, num_res_blocks=1, attention_ds=(1,),
                        channel_mult=(1, 1), num_head_channels=16, resblock_updown=False, conv_resample=True)
  attention = sorted(k for k, v in p.items() if isinstance(v, dict) and is_attention(v))
  assert attention == ["input_blocks_1_1", "middle_block_1", "output_blocks_2_1", "output_blocks_3_1"]
  assert p["input_blocks_2_0"]["kernel"].shape == (3, 3, 32, 32)  # Strided conv downsample.
  assert p["output_blocks_1_1"]["kernel"].shape == (3, 3, 32, 32)  # Conv after nearest upsample.


def test_no_attention_resolutions_leaves_only_the_middle():
  p = unet_param_shapes(8, model_channels=32, out_channels=6, num_res_blocks=2, attention_ds=(),
                        channel_mult=(1, 2), num_head_channels=32)
  attention = sorted(k for k, v in p.items() if isinstance(v, dict) and is_attention(v))
  assert attention == ["middle_block_1"]


def test_downsampling_and_upsampling_shapes():
  unet = make_unet(8, model_channels=16, out_channels=4, num_res_blocks=1, attention_ds=(2,), channel_mult=(1, 2, 2),
                   num_head_channels=16, num_groups=8, resblock_updown=True)
  x = jnp.zeros((2, 8, 8, 2))
  out = jax.eval_shape(lambda: unet.init_with_output(jax.random.PRNGKey(0), x, jnp.zeros((2,), jnp.int32),
                                                     jnp.zeros((2, 3, 5)), jnp.zeros((2, 64)))[0])
  assert out.shape == (2, 8, 8, 4) and out.dtype == jnp.float32
