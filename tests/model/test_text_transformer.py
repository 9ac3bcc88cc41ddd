"""The text encoder (GLIDE_REFERENCE.md §1) against a float64 numpy transcription of glide-text2im's
`xf.py` and `Text2ImUNet.get_text_emb`, plus the padding-mask invariances."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from glide_jax.model.model_config import ModelConfig
from glide_jax.model.text_transformer import TextTransformer

VOCAB, CTX, WIDTH, LAYERS, HEADS, OUT = 257, 8, 32, 2, 4, 48  # OUT: the UNet's time embedding, 4 x 12.


def random_params(module, seed):
  """Parameters of the module's shapes with random (not init) values, so every path is exercised."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, CTX), jnp.int32),
                          jnp.zeros((1, CTX), bool))["params"]
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  values = [(rng.normal(size=s.shape) * 0.3 + (1.0 if s.shape == (WIDTH,) else 0.0)).astype(np.float32)
            for s in leaves]
  return jax.tree_util.tree_unflatten(treedef, values)


def make_encoder(dtype="float32"):
  """The text transformer of a model with these text settings (the image settings do not matter to it)."""
  return TextTransformer(ModelConfig(
      image_size=8, in_channels=1, model_channels=OUT // 4, channel_mult=(1,), num_res_blocks=1,
      attention_resolutions=(), num_head_channels=OUT // 4, num_groups=1, dropout=0.0, learn_sigma=True,
      resblock_updown=False, conv_resample=False, vocab_size=VOCAB, text_ctx=CTX, xf_width=WIDTH, xf_layers=LAYERS,
      xf_heads=HEADS, dtype=dtype))


@pytest.fixture(scope="module")
def encoder():
  module = make_encoder()
  params = random_params(module, 0)
  apply = jax.jit(functools.partial(module.apply, {"params": params}))
  return module, params, apply


def tokens_and_masks():
  """Four rows: a partial prompt, an all-real row, and two empty prompts with different ids."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 256, (4, CTX)).astype(np.int32)
  mask = np.zeros((4, CTX), bool)
  mask[0, :3] = True
  mask[1, :] = True
  tokens[0, 3:] = 256
  tokens[2] = 256  # The empty prompt's canonical ids...
  return tokens, mask  # ...and row 3 is "empty" with arbitrary ids.


# --- an independent numpy transcription of glide-text2im ---------------------------------------------
def np_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_linear(x, p):
  return x @ np.asarray(p["kernel"], np.float64) + p["bias"]


def np_qkv_multihead_attention(qkv, n_heads):
  """xf.py QKVMultiheadAttention: view [B, L, H, 3·ch], split q|k|v per head."""
  bs, n_ctx, width = qkv.shape
  attn_ch = width // n_heads // 3
  scale = 1 / np.sqrt(np.sqrt(attn_ch))
  qkv = qkv.reshape(bs, n_ctx, n_heads, -1)
  q, k, v = qkv[..., :attn_ch], qkv[..., attn_ch:2 * attn_ch], qkv[..., 2 * attn_ch:]
  weight = np.einsum("bthc,bshc->bhts", q * scale, k * scale)
  weight = np.exp(weight - weight.max(-1, keepdims=True))
  weight /= weight.sum(-1, keepdims=True)
  return np.einsum("bhts,bshc->bthc", weight, v).reshape(bs, n_ctx, -1)


def np_text_emb(params, tokens, mask):
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = p["token_embedding"]["embedding"][tokens] + p["positional_embedding"][None]
  x = np.where(mask[..., None], x, p["padding_embedding"][None])
  for i in range(LAYERS):
    blk = p[f"resblocks_{i}"]
    x = x + np_linear(np_qkv_multihead_attention(np_linear(np_layer_norm(x, blk["ln_1"]), blk["attn"]["c_qkv"]), HEADS),
                      blk["attn"]["c_proj"])
    h = np_linear(np_layer_norm(x, blk["ln_2"]), blk["c_fc"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # nn.GELU(): exact erf form.
    x = x + np_linear(h, blk["c_proj"])
  xf_out = np_layer_norm(x, p["final_ln"])
  xf_proj = np_linear(xf_out[:, -1], p["transformer_proj"])
  return xf_out, xf_proj


# --- tests -----------------------------------------------------------------------------------------
def test_matches_the_glide_transcription(encoder):
  module, params, apply = encoder
  tokens, mask = tokens_and_masks()
  xf_out, xf_proj = apply(jnp.asarray(tokens), jnp.asarray(mask))
  assert xf_out.shape == (4, CTX, WIDTH) and xf_proj.shape == (4, OUT)
  assert xf_out.dtype == jnp.float32 and xf_proj.dtype == jnp.float32
  ref_out, ref_proj = np_text_emb(params, tokens, mask)
  np.testing.assert_allclose(np.asarray(xf_out), ref_out, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(xf_proj), ref_proj, rtol=2e-4, atol=2e-4)


def test_a_causal_encoder_reads_each_token_and_the_ones_before_it(encoder):
  """model.xf_causal, with the same parameters: a token's feature depends on it and the tokens before it (GPT-2's
  and CLIP's text encoders); GLIDE's encoder reads every token everywhere."""
  module, params, _ = encoder
  causal = TextTransformer(dataclasses.replace(module.config, xf_causal=True))
  tokens, mask = tokens_and_masks()
  changed = tokens.copy()
  changed[1, 5] = (changed[1, 5] + 1) % 256  # Row 1 is all real tokens.
  features = {name: [np.asarray(m.apply({"params": params}, jnp.asarray(t), jnp.asarray(mask))[0][1])
                     for t in (tokens, changed)] for name, m in (("causal", causal), ("glide", module))}
  before, after = features["causal"]
  np.testing.assert_array_equal(before[:5], after[:5])
  assert np.abs(before[5:] - after[5:]).max(-1).min() > 1e-3  # The changed token and every one after it.
  glide_before, glide_after = features["glide"]
  assert np.abs(glide_before - glide_after).max(-1).min() > 1e-3
  assert np.abs(before - glide_before).max() > 1e-3


def test_the_embedding_skip_adds_each_tokens_own_embedding_beside_its_feature(encoder):
  """model.xf_embedding_skip: xf_out is the transformer's features, then each position's own embedding (token +
  position, or padding) layer-normed, which no other token changes; xf_proj is as without it."""
  module, params, apply = encoder
  skip = TextTransformer(dataclasses.replace(module.config, xf_causal=True, xf_embedding_skip=True))
  causal = TextTransformer(dataclasses.replace(module.config, xf_causal=True))
  skip_params = {**params, "embedding_ln": {"scale": np.full(WIDTH, 1.5, np.float32),
                                            "bias": np.full(WIDTH, 0.25, np.float32)}}
  tokens, mask = tokens_and_masks()
  changed = tokens.copy()
  changed[1, 5] = (changed[1, 5] + 1) % 256
  (out, proj), (out_changed, _) = (skip.apply({"params": skip_params}, jnp.asarray(t), jnp.asarray(mask))
                                   for t in (tokens, changed))
  reference_out, reference_proj = causal.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask))
  assert out.shape == (*tokens.shape, 2 * WIDTH)
  np.testing.assert_array_equal(np.asarray(out[..., :WIDTH]), np.asarray(reference_out))
  np.testing.assert_array_equal(np.asarray(proj), np.asarray(reference_proj))
  embedded = np.where(mask[..., None], np.asarray(params["token_embedding"]["embedding"])[tokens]
                      + np.asarray(params["positional_embedding"])[None], np.asarray(params["padding_embedding"])[None])
  normed = (embedded - embedded.mean(-1, keepdims=True)) / np.sqrt(embedded.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(out[..., WIDTH:]), 1.5 * normed + 0.25, rtol=1e-4, atol=1e-4)
  moved = np.abs(np.asarray(out_changed[1, :, WIDTH:]) - np.asarray(out[1, :, WIDTH:])).max(-1)
  assert moved[5] > 1e-3 and np.all(np.delete(moved, 5) == 0)  # Only the changed token's own embedding moves.


def test_xf_proj_reads_only_the_last_position(encoder):
  module, params, apply = encoder
  tokens, mask = tokens_and_masks()
  xf_out, xf_proj = apply(jnp.asarray(tokens), jnp.asarray(mask))
  last = np.asarray(xf_out)[:, -1] @ np.asarray(params["transformer_proj"]["kernel"]) + np.asarray(
      params["transformer_proj"]["bias"])
  np.testing.assert_allclose(np.asarray(xf_proj), last, rtol=1e-5, atol=1e-5)
  mean_pooled = np.asarray(xf_out).mean(1) @ np.asarray(params["transformer_proj"]["kernel"])
  assert not np.allclose(np.asarray(xf_proj), mean_pooled, atol=1e-2)


def test_empty_prompt_does_not_depend_on_token_ids(encoder):
  _, params, apply = encoder
  tokens, mask = tokens_and_masks()
  xf_out, xf_proj = (np.asarray(a) for a in apply(jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_array_equal(xf_out[2], xf_out[3])
  np.testing.assert_array_equal(xf_proj[2], xf_proj[3])
  # It is the transformer applied to the padding embeddings alone.
  ref_out, _ = np_text_emb(params, tokens[2:3] * 0, mask[2:3])
  np.testing.assert_allclose(xf_out[2], ref_out[0], rtol=2e-4, atol=2e-4)


def test_padded_positions_ignore_their_ids_and_real_tokens_matter(encoder):
  _, _, apply = encoder
  tokens, mask = tokens_and_masks()
  base_out, base_proj = (np.asarray(a) for a in apply(jnp.asarray(tokens), jnp.asarray(mask)))
  changed_pad = tokens.copy()
  changed_pad[0, 5] = 17  # Row 0's mask is False at 5.
  out, proj = (np.asarray(a) for a in apply(jnp.asarray(changed_pad), jnp.asarray(mask)))
  np.testing.assert_array_equal(out, base_out)
  np.testing.assert_array_equal(proj, base_proj)
  changed_real = tokens.copy()
  changed_real[0, 1] = (tokens[0, 1] + 1) % 256  # A real token.
  out, proj = (np.asarray(a) for a in apply(jnp.asarray(changed_real), jnp.asarray(mask)))
  # Attention is bidirectional and unmasked: every position, the pad slots included, sees the change.
  assert np.all(np.abs(out[0] - base_out[0]).max(-1) > 1e-4)
  assert np.abs(proj[0] - base_proj[0]).max() > 1e-4
  np.testing.assert_array_equal(out[1:], base_out[1:])  # Rows are independent.


def test_mask_replaces_the_embedding_by_the_padding_embedding(encoder):
  """Same ids, different masks: the features differ, so the mask (not the id) decides what is padding."""
  _, _, apply = encoder
  tokens = np.full((4, CTX), 256, np.int32)
  mask = np.zeros((4, CTX), bool)
  mask[1, :] = True  # Pad ids treated as real tokens: the pad id's learned embedding is used instead.
  out = np.asarray(apply(jnp.asarray(tokens), jnp.asarray(mask))[0])
  np.testing.assert_array_equal(out[0], out[2])
  assert np.abs(out[0] - out[1]).max() > 1e-3


def test_init_shapes_and_dtypes():
  module = make_encoder("bfloat16")
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, CTX), jnp.int32),
                          jnp.zeros((1, CTX), bool))["params"]
  assert shapes["token_embedding"]["embedding"].shape == (VOCAB, WIDTH)
  assert shapes["positional_embedding"].shape == (CTX, WIDTH)
  assert shapes["padding_embedding"].shape == (CTX, WIDTH)
  assert shapes["resblocks_0"]["attn"]["c_qkv"]["kernel"].shape == (WIDTH, 3 * WIDTH)
  assert shapes["resblocks_0"]["c_fc"]["kernel"].shape == (WIDTH, 4 * WIDTH)
  assert f"resblocks_{LAYERS - 1}" in shapes and f"resblocks_{LAYERS}" not in shapes
  assert shapes["transformer_proj"]["kernel"].shape == (WIDTH, OUT)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
