"""A tiny noised CLIP of configs/tiny.py's data and noise (16x16 MNIST slice, 100 timesteps), for tests and
smoke runs of --mode=train_clip and CLIP guidance (seconds per run)."""

from configs import tiny  # The data and diffusion of the model it guides.


def get_config():
  config = tiny.get_config()
  c = config.clip
  c.image_heads, c.image_head_width, c.image_blocks = 2, 8, 1
  c.text_heads, c.text_head_width, c.text_blocks = 2, 8, 1
  c.embed_dim, c.max_text_len, c.logit_scale = 16, 8, 20.0
  config.train.batch_size = 16
  config.train.num_steps = 4
  config.train.checkpoint_every = 2
  config.train.log_every = 2
  return config
