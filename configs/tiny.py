"""A tiny model on a slice of MNIST at 16x16, for tests and smoke runs (seconds per run)."""

from glide_jax.config import default_config


def get_config():
  config = default_config()
  config.data.train_split = "train[:512]"
  config.data.test_split = "test[:256]"
  config.data.image_size = 16
  config.model.model_channels = 32
  # One level (no down- or upsampling) and attention (with the text's keys and values) in the middle block only:
  # every test that trains, samples or restores compiles this model, and a second level or attention beside each
  # ResBlock would make each of those programs slower to trace and compile for nothing they check
  # (docs/testing.md, steps 10 and 14). The model tests cover more levels and attention at them.
  config.model.channel_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.model.num_head_channels = 32
  config.model.dropout = 0.0
  config.model.text_ctx = 8
  config.model.xf_width = 32
  config.model.xf_layers = 1
  config.model.xf_heads = 2
  config.diffusion.num_timesteps = 100
  config.train.batch_size = 16
  config.train.num_steps = 20
  config.train.learning_rate = 1e-3
  config.train.ema_decay = 0.99
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.sample.respacing = "10"
  config.train.sample_respacing = "10"
  config.sample.guidance_scales = (0.0, 3.0)
  return config
