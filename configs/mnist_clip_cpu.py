"""A noised CLIP of MNIST for CLIP guidance of configs/mnist_cpu.py's model, trained on a 2-core CPU.

  python main.py --config=configs/mnist_clip_cpu.py --workdir=runs/mnist_clip --mode=train_clip

Its data and diffusion sections are mnist_cpu's (32x32 grey digits, 1000 cosine steps): the image encoder
reads the x_t that model's sampler produces. The sizes are config.clip's defaults (a 4-block image encoder and
a 2-block text encoder, 64 wide); the optimiser, batch and steps are config.train's.
"""

from glide_jax.config import default_config


def get_config():
  config = default_config()
  # A fixed logit scale of 20 learns faster from scratch than the release's 100 (docs/quality.md, "CLIP
  # guidance"); CLIP guidance's scales are relative to it.
  config.clip.logit_scale = 20.0
  config.train.batch_size = 256
  config.train.num_steps = 3000
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 100
  config.train.lr_schedule = "cosine"
  config.train.ema_decay = 0.999
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  return config
