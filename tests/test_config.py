"""validate_config: the shipped configs pass; an invalid value in any section (whatever the mode) raises
ConfigError naming the field; the allowed names are the implementations' own tables."""

import glob
import importlib.util
import os
import re

import pytest

from configs import mnist_cpu, tiny
from glide_jax.config import default_config, validate_config
from glide_jax.diffusion import SAMPLERS, SCHEDULE_NAMES
from glide_jax.errors import ConfigError, UserError
from glide_jax.model import DTYPES
from glide_jax.model import tokenizer as tokenizer_lib
from glide_jax.model.model_config import ATTENTION_IMPLS, NORM_IMPLS
from glide_jax.sampling.guidance import GUIDANCE
from glide_jax.train.lr_schedules import LR_SCHEDULES
from helpers.paths import REPO


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))),
                         ids=lambda p: os.path.basename(p))
def test_every_shipped_config_is_valid(path):
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  validate_config(module.get_config())
  validate_config(default_config())


@pytest.mark.parametrize("field,names", [("sample.sampler", tuple(SAMPLERS)), ("sample.guidance", tuple(GUIDANCE)),
                                         ("train.lr_schedule", tuple(LR_SCHEDULES)),
                                         ("diffusion.noise_schedule", SCHEDULE_NAMES),
                                         ("model.dtype", tuple(DTYPES) + ("auto",)),
                                         ("model.attention_impl", ("xla", "auto")),
                                         ("model.norm_impl", NORM_IMPLS + ("auto",))])
def test_the_allowed_names_are_the_implementations_tables(field, names):
  section, name = field.split(".")
  for value in names:
    config = tiny.get_config()
    config[section][name] = value
    if value == "autoguidance":
      config.sample.guide_step = 1  # It needs a guide.
    if value == "clip":
      config.sample.clip_workdir = "runs/clip"  # It needs a CLIP.
    validate_config(config)
  names = ATTENTION_IMPLS + ("auto",) if field == "model.attention_impl" else names  # cudnn: not on CPU.
  config = tiny.get_config()
  config[section][name] = "no-such-name"
  with pytest.raises(ConfigError, match=re.escape(f"config.{field} = 'no-such-name' is invalid: choose one of "
                                                  f"{tuple(names)}")):
    validate_config(config)


def test_a_tokenizer_that_cannot_be_built_here_is_refused_up_front(monkeypatch, tmp_path):
  """model.tokenizer="gpt2" validates with the vocabulary the package ships; without its files (a broken
  install) it must fail in validation, not when the tokenizer is built."""
  config = tiny.get_config()
  config.model.tokenizer = "gpt2"
  validate_config(config)
  monkeypatch.setattr(tokenizer_lib, "GPT2_VOCAB_DIR", str(tmp_path))
  with pytest.raises(ConfigError, match=r"config\.model\.tokenizer = 'gpt2' is invalid: GPT-2's vocabulary files "
                                        r"\(encoder\.json\.gz, vocab\.bpe\.gz\) are missing.*Use 'byte'"):
    validate_config(config)
  with pytest.raises(ConfigError, match="cannot be used"):
    tokenizer_lib.get_tokenizer("gpt2")


@pytest.mark.parametrize("field,value,named", [
    ("data.channels", 2, "data.channels"),
    ("data.name", None, "data.name"),
    ("model.low_res_size", 32, "model.low_res_size"),     # Not below data.image_size (32).
    ("model.low_res_size", -1, "model.low_res_size"),
    ("sample.upsample_temp", 0.0, "sample.upsample_temp"),
    ("sample.base_workdir", None, "sample.base_workdir"),
    ("data.prompt_templates", ("{digit}",), "data.prompt_templates"),  # Only {name} and {label} exist.
    ("data.image_size", 30, "data.image_size"),           # 4 levels need a multiple of 8.
    ("model.channel_mult", (), "model.channel_mult"),
    ("model.attention_resolutions", (5,), "model.attention_resolutions"),
    ("model.num_groups", 24, "model.num_groups"),         # 128 channels are not divisible by 24.
    ("model.num_head_channels", 48, "model.num_head_channels"),
    ("model.dropout", 1.0, "model.dropout"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.attention_impl", "cudnn", "model.attention_impl"),  # Needs an NVIDIA GPU; the tests run on CPU.
    ("model.norm_impl", "welford", "model.norm_impl"),
    ("model.tokenizer", "bpe", "model.tokenizer"),
    ("model.xf_heads", 3, "model.xf_width/xf_heads"),     # 128 is not a multiple of 3.
    ("model.learn_sigma", False, "model.learn_sigma"),
    ("diffusion.num_timesteps", 0, "diffusion.num_timesteps"),
    ("diffusion.noise_schedule", "sigmoid", "diffusion.noise_schedule"),
    ("diffusion.snr_scale", 0.0, "diffusion.snr_scale"),
    ("diffusion.snr_scale", float("inf"), "diffusion.snr_scale"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.microbatch_size", 48, "train.microbatch_size"),  # 48 does not divide the batch of 128.
    ("train.learning_rate", float("nan"), "train.learning_rate"),
    ("train.p_uncond", 1.5, "train.p_uncond"),
    ("train.edit_composites", 1.5, "train.edit_composites"),
    ("train.edit_composites", 0.5, "train.edit_composites"),  # Not an inpainting model.
    ("train.ema_decay", 1.0, "train.ema_decay"),
    ("train.grad_clip", 0.0, "train.grad_clip"),
    ("train.log_every", 0, "train.log_every"),
    ("train.sample_every", -1, "train.sample_every"),
    ("train.sample_guidance", -1.0, "train.sample_guidance"),
    ("data.prompt_templates", (), "data.prompt_templates"),
    ("train.warmup_steps", -1, "train.warmup_steps"),
    ("train.adam_b2", 1.0, "train.adam_b2"),
    ("train.sample_respacing", "fastest", "train.sample_respacing"),
    # sample.* and eval.* are checked in every mode, training included.
    ("sample.sampler", "euler", "sample.sampler"),
    ("train.lr_schedule", "linear", "train.lr_schedule"),
    ("train.lr_end_factor", 1.5, "train.lr_end_factor"),
    ("train.min_snr_gamma", -1.0, "train.min_snr_gamma"),
    ("train.min_snr_gamma", float("nan"), "train.min_snr_gamma"),
    ("train.text_encoder_lr_scale", -0.5, "train.text_encoder_lr_scale"),
    ("train.text_encoder_lr_scale", float("inf"), "train.text_encoder_lr_scale"),
    ("sample.guidance_interval", (0.5, 0.5), "sample.guidance_interval"),
    ("sample.guidance_interval", (-0.1, 0.5), "sample.guidance_interval"),
    ("sample.guidance_interval", (0.1, 1.5), "sample.guidance_interval"),
    ("sample.guidance_interval", (0.1,), "sample.guidance_interval"),
    ("sample.respacing", "0", "sample.respacing"),
    ("sample.respacing", "abc", "sample.respacing"),
    ("sample.respacing", "2000", "sample.respacing"),      # More steps than the 1000 of the process.
    ("sample.respacing", "ddimx", "sample.respacing"),
    ("sample.ddim_eta", -0.5, "sample.ddim_eta"),
    ("sample.ddim_eta", float("nan"), "sample.ddim_eta"),
    ("sample.guidance_scales", (), "sample.guidance_scales"),
    ("sample.guidance_scales", (1.0, -1.0), "sample.guidance_scales"),
    ("sample.guidance_scales", (float("inf"),), "sample.guidance_scales"),
    ("sample.guidance_scales", ("one",), "sample.guidance_scales"),
    ("sample.guidance", "autoguidance", "sample.guidance"),  # Without a guide.
    ("sample.guide_step", -1, "sample.guide_step"),
    ("sample.guide_step", 2, "sample.guide_step"),  # Read by autoguidance only.
    ("sample.guide_workdir", "/some/run", "sample.guide_workdir"),
    ("sample.apg_eta", 0.5, "sample.apg_eta"),  # Read by adaptive projected guidance only.
    ("sample.apg_norm_threshold", 2.0, "sample.apg_norm_threshold"),
    ("sample.guidance", "clip", "sample.guidance"),  # Without a CLIP.
    ("sample.clip_workdir", "/some/clip", "sample.clip_workdir"),  # Read by CLIP guidance only.
    ("clip.patch_size", 5, "clip.patch_size"),  # Does not divide the 32 px images.
    ("clip.image_blocks", 0, "clip.image_blocks"),
    ("clip.n_vocab", 1000, "clip.n_vocab"),  # Smaller than CLIP's BPE vocabulary.
    ("clip.max_text_len", 1, "clip.max_text_len"),
    ("clip.logit_scale", 0.0, "clip.logit_scale"),
    ("eval.shipped_classifier", None, "eval.shipped_classifier"),
    ("sample.num_per_prompt", 0, "sample.num_per_prompt"),
    ("sample.batch_size", 0, "sample.batch_size"),
    ("sample.prompts", " , ", "sample.prompts"),
    ("edit.prompts", ",", "edit.prompts"),
    ("edit.targets", "others", "edit.targets"),
    ("model.position_embedding", None, "model.position_embedding"),
    ("model.xf_causal", None, "model.xf_causal"),
    ("model.xf_embedding_skip", None, "model.xf_embedding_skip"),
    ("data.download_checksums", "/nonexistent/checksums.txt", "data.download_checksums"),
    ("eval.samples_per_digit", 1, "eval.samples_per_digit"),
    ("eval.classifier_learning_rate", 0.0, "eval.classifier_learning_rate"),
    ("eval.output_dir", None, "eval.output_dir"),
    ("eval.classifier_train_split", " ", "eval.classifier_train_split"),
    ("mesh.shape", (-1, -1), "mesh.shape"),
    ("mesh.shape", (0, 1), "mesh.shape"),
    ("mesh.shape", (2, 2, 2), "mesh.shape"),
])
def test_invalid_value_names_the_field(field, value, named):
  config = default_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(f"config.{named} = ")) as info:
    validate_config(config)
  assert isinstance(info.value, UserError)
  assert "is invalid" in str(info.value)


@pytest.mark.parametrize("field,value", [("apg_eta", -0.1), ("apg_eta", 1.5), ("apg_eta", float("nan")),
                                         ("apg_norm_threshold", -1.0), ("apg_norm_threshold", float("inf"))])
def test_adaptive_projected_guidance_settings_are_checked(field, value):
  config = default_config()
  config.sample.guidance, config.sample.apg_eta, config.sample.apg_norm_threshold = "adaptive_projected", 1.0, 5.0
  validate_config(config)
  config.sample[field] = value
  with pytest.raises(ConfigError, match=re.escape(f"config.sample.{field} = ")):
    validate_config(config)


def test_an_upsampler_cannot_sample_during_training():
  config = default_config()
  config.model.low_res_size = 16
  validate_config(config)
  config.train.sample_every = 100
  with pytest.raises(ConfigError, match=r"train.sample_every.*upsampler's samples need a base model's"):
    validate_config(config)


def test_the_message_shows_the_bad_value_and_the_fix():
  config = default_config()
  config.data.image_size = 20
  with pytest.raises(ConfigError) as info:
    validate_config(config)
  message = str(info.value)
  assert "config.data.image_size = 20" in message and "divisible by 8" in message


def test_a_narrower_model_is_told_the_group_and_head_sizes_that_fit():
  config = mnist_cpu.get_config()
  config.model.num_groups, config.model.num_head_channels = 32, 64
  config.model.model_channels = 24  # Widths 24, 48, 48: not divisible by 32 groups or 64-channel heads.
  with pytest.raises(ConfigError, match=re.escape("num_groups=24.")):
    validate_config(config)
  config.model.num_groups = 8
  with pytest.raises(ConfigError, match=re.escape("widths are [48]). Set --config.model.num_head_channels=48.")):
    validate_config(config)
  config.model.num_head_channels = 48
  validate_config(config)


def test_attention_resolution_message_lists_the_reachable_sizes():
  config = tiny.get_config()
  config.model.channel_mult, config.model.attention_resolutions = (1, 2), (4,)
  with pytest.raises(ConfigError, match=r"never works at 4x4.*\[16, 8\]"):
    validate_config(config)


def test_a_missing_or_unreadable_prompt_file_is_refused_up_front(tmp_path):
  config = tiny.get_config()
  config.sample.prompt_file = str(tmp_path / "missing.txt")
  with pytest.raises(UserError, match=r"Cannot read the prompt file .*missing\.txt"):
    validate_config(config)
  (tmp_path / "latin1.txt").write_bytes("sept \u00e9crit\n".encode("latin-1"))
  config.sample.prompt_file = str(tmp_path / "latin1.txt")
  with pytest.raises(UserError, match="not UTF-8"):
    validate_config(config)


def test_a_classifier_dir_that_is_a_file_is_refused_up_front(tmp_path):
  (tmp_path / "file").write_text("x")
  config = tiny.get_config()
  config.eval.classifier_dir = str(tmp_path / "file")
  with pytest.raises(ConfigError, match=r"config\.eval\.classifier_dir = .* it is a file"):
    validate_config(config)
