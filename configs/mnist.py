"""The reference MNIST lesson's setup (128 channels, batch 128, 10k steps) for a GPU or TPU."""

from glide_jax.config import default_config


def get_config():
  return default_config()
