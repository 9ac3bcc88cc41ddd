"""The typed model config: "auto" compute fields resolved per platform, and cuDNN attention only where it runs;
the two GroupNorm implementations compute the same model."""

import functools

import jax
import numpy as np
import pytest

from configs import mnist, tiny
from glide_jax.model import ModelConfig, Text2ImUNet, init_params
from glide_jax.model.model_config import cudnn_attention_unsupported, platform, resolve_kernels
from glide_jax.model.tokenizer import ByteTokenizer


@pytest.mark.parametrize("on,expected", [
    ("cpu", {"dtype": "float32", "attention_impl": "xla", "norm_impl": "dot"}),
    ("gpu", {"dtype": "bfloat16", "attention_impl": "cudnn", "norm_impl": "reduce"}),
    ("rocm", {"dtype": "bfloat16", "attention_impl": "xla", "norm_impl": "reduce"}),
    ("tpu", {"dtype": "bfloat16", "attention_impl": "xla", "norm_impl": "reduce"}),
])
def test_auto_resolves_per_platform(on, expected):
  assert resolve_kernels(mnist.get_config().model, on) == expected


def test_explicit_choices_are_kept_and_auto_attention_follows_the_dtype():
  m = mnist.get_config().model
  m.dtype, m.norm_impl = "float32", "dot"
  assert resolve_kernels(m, "gpu") == {"dtype": "float32", "attention_impl": "xla", "norm_impl": "dot"}
  m.dtype, m.attention_impl = "bfloat16", "xla"
  assert resolve_kernels(m, "gpu") == {"dtype": "bfloat16", "attention_impl": "xla", "norm_impl": "dot"}


def test_cudnn_attention_needs_an_nvidia_gpu_bfloat16_and_supported_head_widths():
  assert cudnn_attention_unsupported((64, 64), "bfloat16", "gpu") is None
  assert "NVIDIA GPU" in cudnn_attention_unsupported((64, 64), "bfloat16", "tpu")
  assert "bfloat16" in cudnn_attention_unsupported((64, 64), "float32", "gpu")
  assert "[12, 256]" in cudnn_attention_unsupported((12, 64, 256), "bfloat16", "gpu")
  m = mnist.get_config().model
  m.xf_width, m.xf_heads = 96, 8  # Text heads of 12: auto falls back to XLA.
  assert resolve_kernels(m, "gpu")["attention_impl"] == "xla"


def test_the_tests_platform_resolves_to_the_cpu_defaults():
  assert platform() == "cpu"
  config = ModelConfig.from_config(tiny.get_config(), ByteTokenizer.vocab_size)
  assert (config.dtype, config.attention_impl, config.norm_impl) == ("float32", "xla", "dot")


def test_reduce_and_dot_norms_compute_the_same_model():
  """GPU/TPU's GroupNorm moments (reductions) and CPU's (dot products): one model, same parameters and output."""
  outputs, trees = [], []
  for impl in ("dot", "reduce"):
    config = tiny.get_config()
    config.model.norm_impl = impl
    model = Text2ImUNet(ModelConfig.from_config(config, ByteTokenizer.vocab_size))
    params = jax.jit(functools.partial(init_params, model))(jax.random.key(0))
    params = jax.tree_util.tree_map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 16, 16, 1)).astype(np.float32)
    tokens, mask = ByteTokenizer().tokenize_batch(["7", "three", ""], config.model.text_ctx)
    outputs.append(np.asarray(jax.jit(model.apply)({"params": params}, x, np.array([5, 50, 500]), tokens, mask)))
    trees.append(jax.tree_util.tree_structure(params))
  assert trees[0] == trees[1]
  assert np.abs(outputs[0]).max() > 0.1
  np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
