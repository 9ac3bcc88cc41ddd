"""The reference lesson's setup (mindiffusion lesson_16: 128 channels, batch 128, 10k steps; see
glide_jax/config.py) for a GPU or TPU."""

from glide_jax.config import default_config


def get_config():
  return default_config()
