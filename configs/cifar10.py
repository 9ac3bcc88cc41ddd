"""CIFAR-10 (32x32 RGB, 10 classes, class-name prompts) with improved-diffusion's CIFAR-10 UNet, for a GPU
or TPU. TFDS needs TensorFlow to prepare CIFAR-10 (`pip install tensorflow-cpu` once; see the README)."""

from glide_jax.config import default_config


def get_config():
  config = default_config()
  config.data.name = "cifar10"
  config.data.channels = 3
  config.data.image_size = 32
  # "{name}" is the class's word from the prepared dataset's metadata ("airplane", "automobile", ...).
  config.data.prompt_templates = ("{name}", "a photo of the {name}")
  # improved-diffusion's CIFAR-10 model: 128 channels, 3 residual blocks per level, attention at 16x16 and
  # 8x8, dropout 0.3 (CIFAR-10 overfits where MNIST does not).
  config.model.num_res_blocks = 3
  config.model.attention_resolutions = (16, 8)
  config.model.dropout = 0.3
  config.model.text_ctx = 32
  config.train.learning_rate = 1e-4
  config.train.num_steps = 100_000
  config.train.sample_every = 5000
  config.train.checkpoint_every = 5000
  return config
