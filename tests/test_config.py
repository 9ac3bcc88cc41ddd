"""validate_config: the shipped configs pass; invalid values raise ConfigError naming the field."""

import re

import pytest

from configs import tiny
from glide_jax.config import default_config, validate_config
from glide_jax.errors import ConfigError, UserError


def test_default_and_tiny_configs_are_valid():
  validate_config(default_config())
  validate_config(tiny.get_config())


@pytest.mark.parametrize("field,value,named", [
    ("data.channels", 2, "data.image_size/channels"),
    ("data.image_size", 30, "data.image_size"),           # 4 levels need a multiple of 8.
    ("model.channel_mult", (), "model.channel_mult"),
    ("model.attention_resolutions", (5,), "model.attention_resolutions"),
    ("model.num_groups", 24, "model.num_groups"),         # 128 channels are not divisible by 24.
    ("model.num_head_channels", 48, "model.num_head_channels"),
    ("model.dropout", 1.0, "model.dropout"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.tokenizer", "bpe", "model.tokenizer"),
    ("model.xf_heads", 3, "model.xf_width/xf_heads"),     # 128 is not a multiple of 3.
    ("model.learn_sigma", False, "model.learn_sigma"),
    ("diffusion.num_timesteps", 0, "diffusion.num_timesteps"),
    ("diffusion.noise_schedule", "sigmoid", "diffusion.noise_schedule"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.microbatch_size", 48, "train.microbatch_size"),  # 48 does not divide the batch of 128.
    ("train.learning_rate", float("nan"), "train.learning_rate"),
    ("train.p_uncond", 1.5, "train.p_uncond"),
    ("train.ema_decay", 1.0, "train.ema_decay"),
    ("train.grad_clip", 0.0, "train.grad_clip"),
    ("train.log_every", 0, "train.log_every"),
    ("train.sample_every", -1, "train.sample_every"),
    ("train.sample_guidance", -1.0, "train.sample_guidance"),
    ("data.prompt_templates", (), "data.prompt_templates"),
])
def test_invalid_value_names_the_field(field, value, named):
  config = default_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(f"config.{named} = ")) as info:
    validate_config(config)
  assert isinstance(info.value, UserError)
  assert "is invalid" in str(info.value)


def test_the_message_shows_the_bad_value_and_the_fix():
  config = default_config()
  config.data.image_size = 20
  with pytest.raises(ConfigError) as info:
    validate_config(config)
  message = str(info.value)
  assert "config.data.image_size = 20" in message and "divisible by 8" in message


def test_attention_resolution_message_lists_the_reachable_sizes():
  config = tiny.get_config()
  config.model.attention_resolutions = (4,)
  with pytest.raises(ConfigError, match=r"never works at 4x4.*\[16, 8\]"):
    validate_config(config)
