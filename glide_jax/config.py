"""The default configuration and its validation (every value is checked before any work starts)."""

from __future__ import annotations

import math

import ml_collections

from glide_jax.errors import ConfigError

DTYPE_NAMES = ("float32", "bfloat16")


def num_microbatches(train_config: ml_collections.ConfigDict) -> int:
  """How many microbatches train.microbatch_size splits each batch into (1 when it is 0)."""
  size = train_config.microbatch_size
  return train_config.batch_size // size if size else 1


def default_config() -> ml_collections.ConfigDict:
  """The reference MNIST lesson's settings with GLIDE's model and diffusion conventions."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"            # Any TFDS image dataset with an `image` and a ClassLabel `label`.
  c.data.data_dir = ""             # "" = $TFDS_DATA_DIR, else TFDS's default directory.
  c.data.train_split = "train"     # TFDS split strings work, e.g. "train[:2048]".
  c.data.test_split = "test"
  c.data.image_size = 32           # MNIST's 28x28 is resized (bilinear) as in the reference lesson.
  c.data.channels = 1
  # Prompt templates, one chosen at random per example: {name} = the class's word ("seven"),
  # {label} = its index as a numeral ("7").
  c.data.prompt_templates = ("{name}", "{label}")

  c.model = ml_collections.ConfigDict()
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16,)  # In pixels; the middle block always has attention.
  c.model.num_head_channels = 64
  c.model.num_groups = 32
  c.model.dropout = 0.1
  c.model.learn_sigma = True
  c.model.resblock_updown = False
  c.model.conv_resample = False   # The lesson resamples with avg-pool / nearest, no conv (GLIDE: True).
  c.model.tokenizer = "byte"
  c.model.text_ctx = 128
  c.model.xf_width = 128
  c.model.xf_layers = 6
  c.model.xf_heads = 2
  c.model.dtype = "float32"        # Compute dtype; parameters are always float32.

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.noise_schedule = "squaredcos_cap_v2"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128         # Global batch, split over all devices.
  c.train.microbatch_size = 0      # Gradient accumulation over microbatches of this many examples; 0 = off.
  c.train.num_steps = 10_000
  c.train.learning_rate = 2e-4
  c.train.warmup_steps = 0
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.p_uncond = 0.2           # Probability an example's prompt is replaced by the empty prompt.
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.max_nonfinite_steps = 20  # Stop after this many consecutive non-finite steps (each is skipped).
  c.train.sample_every = 0         # Steps between sample grids in the workdir and TensorBoard; 0 = never.
  c.train.sample_guidance = 4.0    # Guidance scale of those grids (one sample per class).
  c.train.sample_respacing = "50"  # Fast respaced sampler for them.

  c.sample = ml_collections.ConfigDict()
  c.sample.prompts = ""            # Comma-separated; "" = one prompt per class ("zero", ..., "nine").
  c.sample.prompt_file = ""        # Or a UTF-8 file with one prompt per line.
  c.sample.guidance_scales = (0.0, 1.0, 2.0, 4.0, 7.0, 10.0, 20.0)
  c.sample.sampler = "ddpm"        # "ddpm" or "ddim".
  c.sample.respacing = ""          # "" = all T steps; "100", "10,10,3,2,2", "ddim50".
  c.sample.ddim_eta = 0.0
  c.sample.num_per_prompt = 1
  c.sample.use_ema = True
  c.sample.batch_size = 64

  c.eval = ml_collections.ConfigDict()    # --mode=eval and --mode=train_classifier.
  c.eval.samples_per_digit = 100   # Samples per class prompt and guidance scale (config.sample.guidance_scales).
  c.eval.batch_size = 500          # Images per classifier forward pass.
  c.eval.classifier_dir = ""       # "" = $GLIDE_CACHE_DIR (else ~/.cache/glide_jax)/classifiers/<dataset>_<size>px.
  c.eval.classifier_train_split = "train"  # It is scored on data.test_split.
  c.eval.classifier_steps = 1000   # About 2 epochs of MNIST at batch 128.
  c.eval.classifier_batch_size = 128
  c.eval.classifier_learning_rate = 2e-3
  c.eval.classifier_augment = True  # Random shifts of up to 2 pixels (at 32x32).

  c.mesh = ml_collections.ConfigDict()
  # Sizes of the mesh axes (data, fsdp); -1 = all remaining devices. The batch is split over both axes;
  # fsdp > 1 also splits parameters, EMA and optimizer state over that axis (for models too big to replicate).
  c.mesh.shape = (-1, 1)
  return c


def _fail(field: str, value, why: str) -> None:
  raise ConfigError(f"config.{field} = {value!r} is invalid: {why}")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field and the fix for the first invalid value."""
  m, d = c.model, c.data
  if not isinstance(c.seed, int):
    _fail("seed", c.seed, "it must be an integer.")
  if d.image_size < 1 or d.channels not in (1, 3):
    _fail("data.image_size/channels", (d.image_size, d.channels), "need a positive size and 1 or 3 channels.")
  levels = len(m.channel_mult)
  if levels < 1 or any(int(x) != x or x < 1 for x in m.channel_mult):
    _fail("model.channel_mult", m.channel_mult, "it must be a non-empty tuple of positive integers.")
  factor = 2 ** (levels - 1)
  if d.image_size % factor:
    _fail("data.image_size", d.image_size,
          f"the UNet downsamples {levels - 1} times, so the size must be divisible by {factor}; "
          f"change data.image_size or model.channel_mult.")
  reached = [d.image_size // 2 ** i for i in range(levels)]
  for r in m.attention_resolutions:
    if r not in reached:
      _fail("model.attention_resolutions", tuple(m.attention_resolutions),
            f"the UNet never works at {r}x{r}; with image_size {d.image_size} and {levels} levels it reaches "
            f"{reached}.")
  if m.model_channels < 1 or m.num_res_blocks < 1:
    _fail("model.model_channels/num_res_blocks", (m.model_channels, m.num_res_blocks), "both must be positive.")
  for level, mult in enumerate(m.channel_mult):
    ch = m.model_channels * mult
    if ch % m.num_groups:
      _fail("model.num_groups", m.num_groups, f"GroupNorm needs every width divisible by it; {ch} is not.")
    has_attention = level == levels - 1 or reached[level] in m.attention_resolutions
    if has_attention and ch % m.num_head_channels:
      _fail("model.num_head_channels", m.num_head_channels,
            f"attention heads split {ch} channels at {reached[level]}x{reached[level]}, which is not a multiple of it.")
  if not 0.0 <= m.dropout < 1.0:
    _fail("model.dropout", m.dropout, "it must be in [0, 1).")
  if m.dtype not in DTYPE_NAMES:
    _fail("model.dtype", m.dtype, f"choose one of {DTYPE_NAMES}.")
  if m.tokenizer not in ("byte", "gpt2"):
    _fail("model.tokenizer", m.tokenizer, "choose 'byte' or 'gpt2'.")
  if m.text_ctx < 1 or m.xf_layers < 0 or m.xf_width < 1 or m.xf_heads < 1 or m.xf_width % m.xf_heads:
    _fail("model.xf_width/xf_heads", (m.xf_width, m.xf_heads), "the width must be a positive multiple of heads.")
  if not m.learn_sigma:
    _fail("model.learn_sigma", m.learn_sigma, "the hybrid loss and samplers need the learned-range variance.")
  if c.diffusion.num_timesteps < 1:
    _fail("diffusion.num_timesteps", c.diffusion.num_timesteps, "it must be positive.")
  if c.diffusion.noise_schedule not in ("linear", "squaredcos_cap_v2", "cosine"):
    _fail("diffusion.noise_schedule", c.diffusion.noise_schedule, "choose 'linear' or 'squaredcos_cap_v2'.")
  t = c.train
  if t.batch_size < 1:
    _fail("train.batch_size", t.batch_size, "it must be positive.")
  if t.microbatch_size < 0 or (t.microbatch_size and t.batch_size % t.microbatch_size):
    _fail("train.microbatch_size", t.microbatch_size,
          f"it must be 0 (off) or a divisor of train.batch_size ({t.batch_size}).")
  if t.num_steps < 0:
    _fail("train.num_steps", t.num_steps, "it must be zero or positive.")
  if not (t.learning_rate > 0 and math.isfinite(t.learning_rate)):
    _fail("train.learning_rate", t.learning_rate, "it must be a positive number.")
  if not 0.0 <= t.p_uncond <= 1.0:
    _fail("train.p_uncond", t.p_uncond, "it is a probability, in [0, 1].")
  if not 0.0 <= t.ema_decay < 1.0:
    _fail("train.ema_decay", t.ema_decay, "it must be in [0, 1).")
  if t.grad_clip <= 0:
    _fail("train.grad_clip", t.grad_clip, "it must be positive.")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
    if t[name] < 1:
      _fail(f"train.{name}", t[name], "it must be at least 1.")
  if t.sample_every < 0:
    _fail("train.sample_every", t.sample_every, "it must be 0 (off) or positive.")
  if not (math.isfinite(t.sample_guidance) and t.sample_guidance >= 0):
    _fail("train.sample_guidance", t.sample_guidance, "it must be a finite number >= 0.")
  if not d.prompt_templates:
    _fail("data.prompt_templates", d.prompt_templates, "give at least one template, e.g. ('{name}',).")
  if "eval" in c:
    _validate_eval(c.eval)


def _validate_eval(e: ml_collections.ConfigDict) -> None:
  """config.eval: sample counts and the evaluation classifier's training settings."""
  for name, least in (("samples_per_digit", 2), ("batch_size", 1), ("classifier_steps", 1),
                      ("classifier_batch_size", 1)):
    value = e[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      why = " (the diversity figure compares samples of one class pairwise)" if name == "samples_per_digit" else ""
      _fail(f"eval.{name}", value, f"it must be an integer >= {least}{why}.")
  lr = e.classifier_learning_rate
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
    _fail("eval.classifier_learning_rate", lr, "it must be a positive number.")
  if not isinstance(e.classifier_dir, str):
    _fail("eval.classifier_dir", e.classifier_dir, "it must be a directory path, or '' for the default cache.")
  if not (isinstance(e.classifier_train_split, str) and e.classifier_train_split.strip()):
    _fail("eval.classifier_train_split", e.classifier_train_split, "give a TFDS split such as 'train'.")
