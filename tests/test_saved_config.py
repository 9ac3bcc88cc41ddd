"""glide_jax/saved_config.py: which differences between a checkpoint's saved config and the config now make
another model (refused) or another training recipe (named), and which do not."""

from glide_jax.saved_config import config_from_json, config_to_json, model_config_differences, recipe_differences
from helpers.runs import tiny_config


def test_the_saved_config_reads_back_as_the_config():
  config = tiny_config(num_steps=7)
  assert config_to_json(config_from_json(config_to_json(config), tiny_config())) == config_to_json(config)


def test_compute_fields_are_not_model_differences():
  """dtype and kernel choices change how the model computes, not its parameters: a bfloat16 GPU run samples in
  float32 on a CPU, and checkpoints from before these fields existed still load."""
  saved = config_to_json(tiny_config(num_steps=2))
  saved["model"]["dtype"] = "bfloat16"
  del saved["model"]["attention_impl"], saved["model"]["norm_impl"]
  current = tiny_config(num_steps=2)
  current.model.norm_impl = "reduce"
  assert model_config_differences(saved, current) == []
  current.model.xf_layers = 2
  assert model_config_differences(saved, current) == ["model.xf_layers: 1 in the checkpoint, 2 now"]


def test_a_checkpoint_from_before_model_inpaint_existed_is_an_ordinary_model():
  saved = config_to_json(tiny_config(num_steps=2))
  del saved["model"]["inpaint"]
  current = tiny_config(num_steps=2)
  assert model_config_differences(saved, current) == []
  current.model.inpaint = True
  assert model_config_differences(saved, current) == ["model.inpaint: False in the checkpoint, True now"]


def test_a_checkpoint_from_before_diffusion_snr_scale_existed_was_unscaled():
  saved = config_to_json(tiny_config(num_steps=2))
  del saved["diffusion"]["snr_scale"]
  current = tiny_config(num_steps=2)
  assert model_config_differences(saved, current) == []
  current.diffusion.snr_scale = 0.25
  assert model_config_differences(saved, current) == ["diffusion.snr_scale: 1.0 in the checkpoint, 0.25 now"]


def test_recipe_differences_name_the_fields_that_change_a_runs_course():
  saved = config_to_json(tiny_config(num_steps=2))
  current = tiny_config(num_steps=50, log_every=1, checkpoint_every=7)  # More steps and other chores: the same run.
  assert recipe_differences(saved, current) == []
  current.train.min_snr_gamma = 5.0
  current.train.lr_schedule = "cosine"
  current.train.text_encoder_lr_scale = 0.0
  current.seed = 3
  assert recipe_differences(saved, current) == ["seed: 0 in the checkpoint, 3 now",
                                                "train.lr_schedule: 'constant' in the checkpoint, 'cosine' now",
                                                "train.min_snr_gamma: 0.0 in the checkpoint, 5.0 now",
                                                "train.text_encoder_lr_scale: 1.0 in the checkpoint, 0.0 now"]
  # A checkpoint from before these options existed was trained without them.
  del saved["train"]["min_snr_gamma"], saved["train"]["lr_schedule"], saved["train"]["lr_end_factor"]
  del saved["train"]["text_encoder_lr_scale"]
  assert recipe_differences(saved, tiny_config(num_steps=2)) == []
