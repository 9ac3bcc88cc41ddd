"""The released GLIDE models' options (glide-text2im's `model_and_diffusion_defaults`) as this project's config."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import ml_collections

from glide_jax.config import default_config
from glide_jax.errors import UserError

# glide-text2im's upsamplers take images a quarter of their size (64 → 256 px).
UPSAMPLE_FACTOR = 4
# The released checkpoints (glide-text2im's download.py) and the model options each was trained with
# (model_creation.py's defaults; the checkpoints carry no options of their own).
RELEASED_MODELS = ("base", "upsample", "base-inpaint", "upsample-inpaint")
_BASE_OPTIONS = dict(
    image_size=64, num_channels=192, num_res_blocks=3, channel_mult="", num_heads=1, num_head_channels=64,
    num_heads_upsample=-1, attention_resolutions="32,16,8", dropout=0.1, text_ctx=128, xf_width=512,
    xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True, diffusion_steps=1000,
    noise_schedule="squaredcos_cap_v2", use_scale_shift_norm=True, resblock_updown=True, inpaint=False,
    super_res=False)
_UPSAMPLER_CHANGES = dict(image_size=256, num_res_blocks=2, noise_schedule="linear", super_res=True)
# channel_mult="" means glide-text2im's default for the image size.
DEFAULT_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def released_options(model: str) -> dict[str, Any]:
  """glide-text2im's model options for a released model type (see RELEASED_MODELS)."""
  if model not in RELEASED_MODELS:
    raise UserError(f"Unknown GLIDE model {model!r}; choose one of {', '.join(RELEASED_MODELS)}.")
  options = dict(_BASE_OPTIONS, inpaint=model.endswith("-inpaint"))
  if model.startswith("upsample"):
    options.update(_UPSAMPLER_CHANGES)
  return options


def model_in_file(state_dict: Mapping[str, Any], options: Optional[Mapping[str, Any]]) -> Optional[tuple[str, str]]:
  """(the released model type a state dict holds, how that shows), from the options a file records, else from
  the input channels of its first layer (x_t's 3, an upsampler's 3 low-resolution ones, an inpainter's 3 + 1
  known ones); None when neither tells."""
  if options is not None:
    kind = ("upsample" if options.get("super_res") else "base") + ("-inpaint" if options.get("inpaint") else "")
    return kind, "the model options it records say so"
  first = state_dict.get("input_blocks.0.0.weight")
  if first is None or len(first.shape) != 4:
    return None
  channels = int(first.shape[1])
  kinds = {3 + 3 * upsample + 4 * inpaint: ("upsample" if upsample else "base") + ("-inpaint" if inpaint else "")
           for upsample in (0, 1) for inpaint in (0, 1)}
  return (kinds[channels], f"its first layer takes {channels} input channels") if channels in kinds else None


def channel_mult_of(options: Mapping[str, Any]) -> tuple[int, ...]:
  """The per-level channel multipliers: the options' "1,2,3,4", or for "" the default for the image size."""
  if str(options["channel_mult"]):
    return tuple(int(x) for x in str(options["channel_mult"]).split(","))
  size = int(options["image_size"])
  if size not in DEFAULT_CHANNEL_MULT:
    raise UserError(f"glide-text2im has no default channel_mult for {size} px images; the options must give one.")
  return DEFAULT_CHANNEL_MULT[size]


def apply_glide_options(config, options: Mapping[str, Any]) -> None:
  """Sets `config`'s data, model and diffusion sections to glide-text2im's model options (its
  `model_and_diffusion_defaults()` keys, as in a checkpoint's options). GLIDE's upsamplers enlarge 4x."""
  if options.get("num_heads_upsample", -1) not in (-1, options.get("num_heads")):
    raise UserError("num_heads_upsample differs from num_heads; glide-jax's UNet uses one head layout.")
  config.data.image_size = int(options["image_size"])
  config.data.channels = 3
  m = config.model
  m.model_channels = int(options["num_channels"])
  m.channel_mult = channel_mult_of(options)
  m.num_groups = 32  # glide-text2im's GroupNorm32.
  m.num_res_blocks = int(options["num_res_blocks"])
  # glide-text2im places attention where a listed resolution is reached and ignores the others.
  reached = {int(options["image_size"]) // 2 ** level for level in range(len(m.channel_mult))}
  m.attention_resolutions = tuple(r for r in (int(x) for x in str(options["attention_resolutions"]).split(","))
                                  if r in reached)
  m.num_head_channels = int(options["num_head_channels"])
  m.dropout = float(options["dropout"])
  m.text_ctx = int(options["text_ctx"])
  m.xf_width, m.xf_layers, m.xf_heads = int(options["xf_width"]), int(options["xf_layers"]), int(options["xf_heads"])
  m.resblock_updown = bool(options["resblock_updown"])
  m.conv_resample = True  # glide-text2im's default; with resblock_updown it is unused.
  m.learn_sigma = True
  m.tokenizer = "gpt2"
  m.inpaint = bool(options.get("inpaint", False))
  m.low_res_size = int(options["image_size"]) // UPSAMPLE_FACTOR if options.get("super_res") else 0
  unsupported = [k for k, want in (("xf_final_ln", True), ("xf_padding", True), ("use_scale_shift_norm", True))
                 if bool(options.get(k, want)) != want]
  if unsupported:
    raise UserError(f"glide-jax builds GLIDE's model with {', '.join(f'{k}=True' for k in unsupported)}; this "
                    f"checkpoint's options differ.")
  config.diffusion.noise_schedule = str(options["noise_schedule"])
  config.diffusion.num_timesteps = int(options["diffusion_steps"])


def glide_config(model: str) -> ml_collections.ConfigDict:
  """The config of a released GLIDE model: its options, GPT-2 tokens, and the sampling settings of
  glide-text2im's notebooks (guidance 3 and 100 DDPM steps for the 64 px models; for the upsamplers "fast27"
  steps, no guidance, the initial noise at temperature 0.997, and DDIM (η = 0) for `upsample` but DDPM for
  `upsample-inpaint`)."""
  config = default_config()
  apply_glide_options(config, released_options(model))
  config.data.name = ""  # No dataset: the released models are sampled and edited from prompts and PNGs.
  s = config.sample
  s.prompts = "an oil painting of a corgi"
  s.num_per_prompt = 1
  s.batch_size = 8
  s.guidance_scales = (3.0,)  # An upsampler's: the base stage's (the upsampler itself is unguided).
  if config.model.low_res_size:
    s.respacing = "fast27"
    s.upsample_temp = 0.997
    # text2im.ipynb enlarges with DDIM (η = 0); inpaint.ipynb's second stage runs DDPM (p_sample_loop).
    s.sampler = "ddpm" if config.model.inpaint else "ddim"
    s.ddim_eta = 0.0
  else:
    s.respacing = "100"
  config.edit.prompts = "a corgi in a field"
  config.edit.guidance_scales = (5.0,)
  return config
