"""A GLIDE that trains on a 2-core CPU: 16 base channels, 3 levels, a small text transformer."""

from glide_jax.config import default_config


def get_config():
  config = default_config()
  # 16 channels (557k parameters) for 6000 steps beat 32 channels for the 2200 steps that fit the same hour
  # on an AVX2 CPU (docs/quality.md, "Width against steps"). The default 32 groups and 64-channel heads do
  # not divide the widths 16, 32, 32; these keep one head per attention block, as at 32 channels.
  config.model.model_channels = 16
  config.model.num_groups = 16
  config.model.num_head_channels = 32
  config.model.channel_mult = (1, 2, 2)
  config.model.attention_resolutions = (8,)
  config.model.xf_width = 64
  config.model.xf_layers = 2
  config.model.xf_heads = 4
  # MNIST prompts are at most 5 bytes ("seven"); the pooled feature is read at position text_ctx-1,
  # so a short context means fewer pad slots between it and the prompt, and less work per step.
  config.model.text_ctx = 16
  config.train.batch_size = 32
  # Gradient accumulation over microbatches of 16 (8 per core): their activations stay in cache, which
  # makes a 2-core CPU's step faster than one batch of 32 (docs/benchmarks.md). Same expected update.
  config.train.microbatch_size = 16
  config.train.num_steps = 6000
  config.train.learning_rate = 1e-3  # A model this small tolerates (and needs) a larger step than 2e-4.
  config.train.warmup_steps = 200
  # Min-SNR-γ weighting of L_simple and a cosine decay to 0 at num_steps: the recipe docs/quality.md found best
  # for samples per minute of CPU training. The decay ends at num_steps, so on a slower CPU set num_steps to
  # what fits the time rather than stopping the run early.
  config.train.min_snr_gamma = 5.0
  config.train.lr_schedule = "cosine"
  config.train.sample_every = 500
  config.train.ema_decay = 0.999
  config.train.checkpoint_every = 500
  return config
