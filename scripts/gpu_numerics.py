"""The accelerator kernels compute the same model: the full `mnist` model's output with each compute setting
against float32 with the reference kernels (XLA attention, dot-product GroupNorm moments), same parameters.

python scripts/gpu_numerics.py [--config=configs/mnist.py]. Prints ‖out − ref‖ / ‖ref‖ per setting; bfloat16
lands near 1e-2, float32 kernels far under 1e-3 (TF32 on NVIDIA: near 1e-3). Exits 1 above the tolerance.
"""

import functools
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from glide_jax.model import ModelConfig, Text2ImUNet, init_params
from glide_jax.model.model_config import cudnn_attention_unsupported, platform
from glide_jax.model.tokenizer import get_tokenizer

config_flags.DEFINE_config_file("config", "configs/mnist.py", "Config whose model to check.")
TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}


def main(argv):
  del argv
  config = flags.FLAGS.config
  tokenizer = get_tokenizer(config.model.tokenizer)

  def model_with(dtype, attention_impl, norm_impl):
    c = config.copy_and_resolve_references()
    c.model.dtype, c.model.attention_impl, c.model.norm_impl = dtype, attention_impl, norm_impl
    return Text2ImUNet(ModelConfig.from_config(c, tokenizer.vocab_size))

  reference = model_with("float32", "xla", "dot")
  params = jax.jit(functools.partial(init_params, reference))(jax.random.key(0))
  noise = lambda a, k: a + 0.02 * jax.random.normal(k, a.shape)  # noqa: E731  (zero-init layers would hide all)
  leaves, tree = jax.tree_util.tree_flatten(params)
  params = tree.unflatten([noise(a, jax.random.key(i)) for i, a in enumerate(leaves)])
  rng = np.random.default_rng(0)
  n, size, channels = 8, config.data.image_size, config.data.channels
  x = rng.normal(size=(n, size, size, channels)).astype(np.float32)
  t = rng.integers(0, config.diffusion.num_timesteps, n).astype(np.int32)
  tokens, mask = tokenizer.tokenize_batch([str(d) for d in range(n - 1)] + [""], config.model.text_ctx)
  run = lambda model: np.asarray(jax.jit(model.apply)({"params": params}, x, t, tokens, mask), np.float64)  # noqa
  ref = run(reference)
  heads = (config.model.num_head_channels, config.model.xf_width // config.model.xf_heads)
  failed = False
  for dtype in ("float32", "bfloat16"):
    for attention in ("xla", "cudnn"):
      if attention == "cudnn" and cudnn_attention_unsupported(heads, dtype, platform()):
        continue
      for norm in ("dot", "reduce"):
        err = float(np.linalg.norm(run(model_with(dtype, attention, norm)) - ref) / np.linalg.norm(ref))
        ok = np.isfinite(err) and err < TOLERANCE[dtype]
        failed |= not ok
        print(f"{dtype:8s} attention {attention:5s} norm {norm:6s}: relative error {err:.2e} "
              f"{'ok' if ok else 'TOO LARGE'}", flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
