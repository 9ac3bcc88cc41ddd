"""The default configuration and its validation: every value of every section is checked once, before any
work starts, against the tables of allowed names kept beside their implementations.

The defaults are "the reference lesson" that comments here and elsewhere cite: mindiffusion's lesson_16, GLIDE
trained on MNIST (its model, data, optimizer and sampling; ../shared/docs/GLIDE_REFERENCE.md §6), which
configs/mnist.py reproduces.
"""

from __future__ import annotations

import math
import os

import ml_collections

from glide_jax.clip.tokenizer import VOCAB_SIZE as CLIP_VOCAB_SIZE
from glide_jax.data import format_prompt
from glide_jax.diffusion import SAMPLERS, SCHEDULE_NAMES, space_timesteps
from glide_jax.errors import ConfigError
from glide_jax.model import model_config
from glide_jax.model.tokenizer import TOKENIZER_NAMES
from glide_jax.model.tokenizer import unavailable_reason as tokenizer_unavailable_reason
from glide_jax.sampling.guidance import GUIDANCE
from glide_jax.sampling.prompts import read_prompt_file, split_prompts
from glide_jax.train.lr_schedules import LR_SCHEDULES

DATA_SOURCES = ("tfds", "folder", "mnist_scenes")
EDIT_TARGETS = ("next", "all")  # config.edit.targets: glide_jax.editing.nearest.edit_targets.


def num_microbatches(train_config: ml_collections.ConfigDict) -> int:
  """How many microbatches train.microbatch_size splits each batch into (1 when it is 0)."""
  size = train_config.microbatch_size
  return train_config.batch_size // size if size else 1


def default_config() -> ml_collections.ConfigDict:
  """The reference MNIST lesson's settings with GLIDE's model and diffusion conventions."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # "tfds": the TFDS dataset data.name; "folder": the images and captions.jsonl in data.folder (README, "Train
  # on your own captions"), whose one split "train" the split strings slice, e.g. "train[:90%]";
  # "mnist_scenes": MNIST digits in the cells of a 2x2 grid, captioned by their places (glide_jax/scenes.py).
  c.data.source = "tfds"
  c.data.folder = ""
  c.data.scenes = ml_collections.ConfigDict()
  c.data.scenes.count = 60_000     # Scenes in the train split (MNIST's training digits).
  c.data.scenes.test_count = 10_000  # In each of the test and held_out splits (MNIST's test digits).
  c.data.scenes.seed = 0           # Draws the scenes and the held-out captions.
  c.data.scenes.held_out = 0.1     # Share of each kind of caption the train split never shows (held_out split).
  c.data.name = "mnist"            # Any TFDS image dataset with an `image` and a ClassLabel `label`; "" = none
                                   # (a released GLIDE model: sampled and edited from prompts and PNGs).
  c.data.data_dir = ""             # "" = $TFDS_DATA_DIR, else TFDS's default directory.
  c.data.download = True           # Download and prepare the dataset in data_dir the first time it is missing.
  c.data.download_url = ""         # A mirror of MNIST-format files (mnist, fashion_mnist, kmnist); "" = TFDS's.
  # Each download must match TFDS's registered size and sha256; a mirror serving other files on purpose lists
  # theirs here, one "NAME SIZE SHA256" line per file.
  c.data.download_checksums = ""
  c.data.train_split = "train"     # TFDS split strings work, e.g. "train[:2048]".
  c.data.test_split = "test"
  c.data.image_size = 32           # MNIST's 28x28 is resized (bilinear) as in the reference lesson.
  c.data.channels = 1
  # Prompt templates, one chosen at random per example: {name} = the class's word ("seven"),
  # {label} = its index as a numeral ("7").
  c.data.prompt_templates = ("{name}", "{label}")
  # A TFDS dataset of image–caption pairs: its text feature ("a/b" for a nested one; a sequence of texts gives
  # several captions per image), used as the prompts instead of labels and templates; "" = classes.
  c.data.caption_feature = ""
  c.data.image_feature = "image"

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
  # A learned embedding of each image position, added to what every attention block projects to queries, keys
  # and values (GLIDE has none: its convolutions find positions from the borders), for captions about places
  # such as "a 3 to the left of a 7" (docs/results.md, "MNIST scenes", measures it).
  c.model.position_embedding = False
  c.model.tokenizer = "byte"
  c.model.text_ctx = 128
  c.model.xf_width = 128
  c.model.xf_layers = 6
  c.model.xf_heads = 2
  # Whether a caption token attends to the tokens before it only (GPT-2's and CLIP's text encoders), not to all
  # (GLIDE's): then a later word carries the words before it, e.g. the second digit of "a 3 to the left of a 7"
  # carries "left", which the first cannot (docs/results.md, "MNIST scenes").
  c.model.xf_causal = False
  # Whether the UNet's attention also reads each caption token's own embedding (layer-normed) beside the text
  # transformer's feature for it: xf_out is then 2·xf_width wide. A word's identity then reaches the UNet
  # unmixed with its context, which a causal encoder mixes into every later word (docs/results.md, "MNIST scenes").
  c.model.xf_embedding_skip = False
  # An inpainting model (glide-text2im's InpaintText2ImUNet): the UNet also takes the known image times the
  # mask and the mask, 2·C + 1 input channels. Trained with random masks; see train.init_from.
  c.model.inpaint = False
  # An upsampler (glide-text2im's SuperResText2ImUNet) when > 0: the UNet also takes a low_res_size image,
  # upsampled bilinearly; trained on the data's images downsampled to that size.
  c.model.low_res_size = 0
  # How the model computes (parameters are always float32; none of these changes a checkpoint). "auto":
  # bfloat16 on GPU and TPU, float32 on CPU; cuDNN's fused attention on NVIDIA GPUs where it applies;
  # GroupNorm statistics as dot products on CPU, fused reductions elsewhere.
  c.model.dtype = "auto"           # "float32", "bfloat16" or "auto".
  c.model.attention_impl = "auto"  # "xla", "cudnn" or "auto".
  c.model.norm_impl = "auto"       # "dot", "reduce" or "auto".

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.noise_schedule = "squaredcos_cap_v2"  # GLIDE's cosine schedule ("cosine" is an alias); or "linear".
  c.diffusion.snr_scale = 1.0      # < 1: every step noisier, SNR(t) times this (schedules.scale_snr); 1 = as named.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128         # Global batch, split over all devices.
  c.train.microbatch_size = 0      # Gradient accumulation over microbatches of this many examples; 0 = off.
  c.train.num_steps = 10_000
  c.train.learning_rate = 2e-4
  c.train.warmup_steps = 0
  c.train.lr_schedule = "constant"  # Or "cosine": decays to learning_rate · lr_end_factor at num_steps.
  c.train.lr_end_factor = 0.0
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.p_uncond = 0.2           # Probability an example's prompt is replaced by the empty prompt.
  c.train.min_snr_gamma = 0.0      # > 0: L_simple weighted by min(SNR, γ)/SNR (arXiv:2303.09556 uses 5); 0 = off.
  # The text encoder's learning rate as a multiple of the UNet's: 0 freezes it at its initial (or init_from)
  # weights, and then its gradient, Adam moments and EMA are not computed at all (train/step.py). The optimizer
  # state has the same layout at any scale, so a run can resume with another.
  c.train.text_encoder_lr_scale = 1.0
  # An inpainting model on a class dataset: the share of examples made into edit composites (half of an image of
  # one class kept, the other half from the best-fitting image of another class, which is the prompt;
  # glide_jax/editing/composites.py), so that it learns to follow a prompt the kept pixels disagree with.
  c.train.edit_composites = 0.0
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  # A base run's workdir: a fresh run starts from its EMA parameters (every tensor that matches; an inpainting
  # model's extra input channels start at zero, so it first computes what the base model does). "" = none.
  c.train.init_from = ""
  c.train.max_nonfinite_steps = 20  # Stop after this many consecutive non-finite steps (each is skipped).
  c.train.sample_every = 0         # Steps between sample grids in the workdir and TensorBoard; 0 = never.
  c.train.sample_guidance = 4.0    # Guidance scale of those grids (one sample per class).
  c.train.sample_respacing = "50"  # Fast respaced sampler for them.

  c.sample = ml_collections.ConfigDict()
  c.sample.prompts = ""            # Comma-separated; "" = one prompt per class ("zero", ..., "nine").
  c.sample.prompt_file = ""        # Or a UTF-8 file with one prompt per line.
  c.sample.guidance_scales = (0.0, 1.0, 2.0, 4.0, 7.0, 10.0, 20.0)
  c.sample.sampler = "ddpm"        # A key of diffusion.samplers.SAMPLERS: "ddpm", "ddim" or "dpm_solver_pp_2m".
  c.sample.respacing = "100"       # 100 of the T steps, as glide-text2im samples; "" = all T; "10,10,3,2,2", "ddim50".
  c.sample.ddim_eta = 0.0
  # A key of sampling.guidance.GUIDANCE: "classifier_free", "adaptive_projected" or "autoguidance" (below),
  # or "none" (the conditional model, scales unused).
  c.sample.guidance = "classifier_free"
  # Guidance only at timesteps t with lo <= t/T < hi (arXiv:2404.07724); the conditional model elsewhere.
  c.sample.guidance_interval = (0.0, 1.0)
  # Adaptive projected guidance (arXiv:2410.02416): CFG's update on x̂_0, its norm bounded by apg_norm_threshold
  # per sample (0 = unbounded), its part parallel to the conditional x̂_0 weighted by apg_eta (1 = CFG's).
  c.sample.apg_eta = 0.0
  c.sample.apg_norm_threshold = 0.0
  # Autoguidance (arXiv:2406.02507) guides the model with a weaker version of itself: checkpoint guide_step of
  # this run (an earlier one), or of guide_workdir, another run of the same model (its latest when 0).
  c.sample.guide_step = 0
  c.sample.guide_workdir = ""
  # CLIP guidance (guidance="clip", GLIDE §2.4): a noised CLIP's workdir (--mode=train_clip, or a converted
  # release); the scales are the gradient's (glide-text2im's clip_guided notebook uses 3). use_ema picks the
  # CLIP's EMA or raw parameters too.
  c.sample.clip_workdir = ""
  c.sample.num_per_prompt = 1
  c.sample.use_ema = True
  c.sample.batch_size = 64
  # An upsampler's workdir samples the cascade: the base run in base_workdir samples (with its own saved
  # sampler settings and the guidance scales above), then this model enlarges each image from its prompt,
  # unguided and from initial noise at upsample_temp (glide-text2im's text2im notebook: 0.997).
  c.sample.base_workdir = ""
  c.sample.upsample_temp = 1.0

  c.edit = ml_collections.ConfigDict()    # --mode=edit; the sampler settings are config.sample's.
  c.edit.images = "test:0,1,2,3"   # "test:I,J,..." (examples of data.test_split) or PNG paths, comma-separated.
  # The part to generate: "top", "bottom", "left", "right", "box:x0,y0,x1,y1" (pixels of data.image_size,
  # x1 and y1 exclusive), or a mask PNG (white = generate, black = keep).
  c.edit.mask = "bottom"
  c.edit.prompts = ""              # Comma-separated; "" = one per class ("zero", ..., "nine").
  c.edit.guidance_scales = (1.0, 3.0)
  c.edit.eval_images = 500         # --mode=eval_edit: how many test images (the first ones) it edits.
  # --mode=eval_edit: each image's prompted class, "next" ((label + 1) mod classes) or "all" (every other class).
  c.edit.targets = "next"
  c.edit.base_workdir = ""         # Its replacement-method comparison run; "" = train.init_from.

  c.eval = ml_collections.ConfigDict()    # --mode=eval and --mode=train_classifier.
  c.eval.samples_per_digit = 100   # Samples per class prompt and guidance scale (config.sample.guidance_scales).
  c.eval.batch_size = 500          # Images per classifier forward pass.
  c.eval.output_dir = ""            # "" = WORKDIR/eval; a relative path is under WORKDIR (e.g. "eval_ddim").
  # The evaluator shipped in the package for the dataset and image size (MNIST at 32x32), so that every machine
  # scores alike; False, or a dataset or size it has none for: one trained here and cached (--mode=train_classifier).
  c.eval.shipped_classifier = True
  c.eval.classifier_dir = ""       # "" = $GLIDE_CACHE_DIR (else ~/.cache/glide_jax)/classifiers/<dataset>_<size>px.
  c.eval.classifier_train_split = "train"  # It is scored on data.test_split.
  c.eval.classifier_steps = 1000   # About 2 epochs of MNIST at batch 128.
  c.eval.classifier_batch_size = 128
  c.eval.classifier_learning_rate = 2e-3
  c.eval.classifier_augment = True  # Random shifts of up to 2 pixels (at 32x32).

  # A noised CLIP (GLIDE §2.4, glide_jax/clip): its image encoder reads x_t at data.image_size, data.channels
  # and the diffusion's timesteps; --mode=train_clip trains it with config.train's optimiser, batch and steps
  # (configs/mnist_clip_cpu.py). Widths are heads × head width, as in glide-text2im's clip/config.yaml.
  c.clip = ml_collections.ConfigDict()
  c.clip.patch_size = 4
  c.clip.image_heads = 2
  c.clip.image_head_width = 32
  c.clip.image_blocks = 4
  c.clip.text_heads = 2
  c.clip.text_head_width = 32
  c.clip.text_blocks = 2
  c.clip.n_vocab = 0               # Rows of the token table; 0 = CLIP's BPE vocabulary (49,408; the release: 65,536).
  # CLIP tokens per prompt, SOT and EOT included: sampling truncates longer prompts (with a warning), as
  # glide-text2im does; training refuses captions longer than this.
  c.clip.max_text_len = 16
  c.clip.embed_dim = 64
  c.clip.logit_scale = 100.0       # Fixed, as the released model's exp(log scale).

  c.mesh = ml_collections.ConfigDict()
  # Sizes of the mesh axes (data, fsdp); -1 = all remaining devices. The batch is split over both axes;
  # fsdp > 1 also splits parameters, EMA and optimizer state over that axis (for models too big to replicate).
  c.mesh.shape = (-1, 1)
  return c


def base_run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the run an inpainting run was fine-tuned from (train.init_from): the same model without
  the inpainting channels, itself started from scratch, on the data as it is (no edit composites)."""
  base = config.copy_and_resolve_references()
  base.model.inpaint = False
  base.train.init_from = ""
  base.train.edit_composites = 0.0
  return base


def guidance_scales(sample_config: ml_collections.ConfigDict) -> list[float]:
  """config.sample.guidance_scales as floats: a number or a tuple of them (the command line may give a
  tuple of numeric strings, e.g. ('nan',)); a TypeError or ValueError for anything else."""
  scales = sample_config.guidance_scales
  if not isinstance(scales, (tuple, list)):
    scales = (scales,)
  if any(isinstance(x, bool) for x in scales):
    raise TypeError("guidance scales are numbers, not booleans")
  return [float(x) for x in scales]


def _fail(field: str, value, why: str) -> None:
  raise ConfigError(f"config.{field} = {value!r} is invalid: {why}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(field: str, value, least: int, why: str = "") -> None:
  if not _is_int(value) or value < least:
    _fail(field, value, f"it must be an integer >= {least}{why}.")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field and the fix for the first invalid value, in any section.

  Every mode calls this before any work starts, so a value that would fail later (a sampler setting during
  training, say) is reported at once. What only the machine can tell (the device count, the dataset on
  disk, the checkpoint) is checked where it is used, still before any work.
  """
  if not _is_int(c.seed):
    _fail("seed", c.seed, "it must be an integer.")
  _validate_data(c.data)
  _validate_model(c.model, c.data)
  _validate_diffusion(c.diffusion)
  _validate_train(c.train, c.diffusion.num_timesteps)
  _validate_sample(c.sample, c.diffusion.num_timesteps)
  _validate_edit(c.edit)
  _validate_eval(c.eval)
  _validate_mesh(c.mesh)
  _validate_upsampler(c)
  _validate_clip(c.clip, c.data)
  if c.train.edit_composites and not c.model.inpaint:
    _fail("train.edit_composites", c.train.edit_composites, "edit composites train an inpainting model: set "
          "model.inpaint=True (e.g. configs/mnist_cpu_inpaint.py), or 0.")


def _validate_data(d: ml_collections.ConfigDict) -> None:
  if d.source not in DATA_SOURCES:
    _fail("data.source", d.source, f"choose one of {DATA_SOURCES}.")
  if not isinstance(d.folder, str) or (d.source == "folder" and not d.folder.strip()):
    _fail("data.folder", d.folder, "give the folder that holds the images and their captions.jsonl (with "
          "--config.data.source=folder).")
  for name in ("caption_feature", "image_feature"):
    if not isinstance(d[name], str):
      _fail(f"data.{name}", d[name], "give a TFDS feature name, e.g. 'caption' or 'captions/text'.")
  sc = d.scenes
  _check_int("data.scenes.count", sc.count, 1)
  _check_int("data.scenes.test_count", sc.test_count, 1)
  _check_int("data.scenes.seed", sc.seed, 0)
  if not (_is_number(sc.held_out) and 0.0 <= sc.held_out < 1.0):
    _fail("data.scenes.held_out", sc.held_out, "give the share of captions held out of training, in [0, 1).")
  if d.source == "mnist_scenes" and d.channels != 1:
    _fail("data.channels", d.channels, "MNIST scenes are grey: set it to 1.")
  if d.source == "mnist_scenes" and (not _is_int(d.image_size) or d.image_size % 2):
    _fail("data.image_size", d.image_size, "MNIST scenes split the canvas into 2x2 cells: give an even size, e.g. 32.")
  if d.caption_feature and not d.image_feature:
    _fail("data.image_feature", d.image_feature, "give the TFDS feature that holds the images, e.g. 'image'.")
  if d.source == "tfds" and d.caption_feature and not d.name:
    _fail("data.caption_feature", d.caption_feature, "it names a feature of data.name's dataset; set data.name.")
  if not isinstance(d.name, str):
    _fail("data.name", d.name, "give a TFDS name, e.g. 'mnist', or '' for none.")
  for name in ("train_split", "test_split"):
    if not (isinstance(d[name], str) and d[name].strip()):
      _fail(f"data.{name}", d[name], "give a TFDS name or split, e.g. 'mnist' or 'train[:2048]'.")
  if not isinstance(d.data_dir, str):
    _fail("data.data_dir", d.data_dir, "give a directory path, or '' for $TFDS_DATA_DIR.")
  if not isinstance(d.download, bool):
    _fail("data.download", d.download, "give True (prepare a missing dataset on first use) or False.")
  if not isinstance(d.download_checksums, str) or (d.download_checksums
                                                   and not os.path.isfile(os.path.expanduser(d.download_checksums))):
    _fail("data.download_checksums", d.download_checksums, "give a file of 'NAME SIZE SHA256' lines (one per file "
          "the mirror serves), or '' for TFDS's registered checksums.")
  if not isinstance(d.download_url, str) or (d.download_url and not d.download_url.startswith(("http://", "https://"))):
    _fail("data.download_url", d.download_url, "give an http:// or https:// URL of a directory that serves the "
          "dataset's files, or '' for TFDS's own source.")
  _check_int("data.image_size", d.image_size, 1)
  if d.channels not in (1, 3):
    _fail("data.channels", d.channels, "images have 1 (grey) or 3 (RGB) channels.")
  templates = d.prompt_templates
  if isinstance(templates, str) or not templates:
    _fail("data.prompt_templates", templates, "give a tuple of at least one template, e.g. ('{name}', '{label}').")
  for template in templates:
    try:
      format_prompt(str(template), 0, ("zero",))
    except (KeyError, IndexError, ValueError) as e:
      _fail("data.prompt_templates", tuple(templates),
            f"{template!r} cannot be filled ({type(e).__name__}: {e}); templates may use only {{name}} "
            f"(the class word) and {{label}} (its numeral).")


def _largest_divisor(n: int, at_most: int) -> int:
  """The largest divisor of n that is at most at_most: the nearest valid value to suggest for a width split."""
  return max(k for k in range(1, min(n, at_most) + 1) if n % k == 0)


def _validate_model(m: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  levels = len(m.channel_mult)
  if levels < 1 or any(not _is_int(x) or x < 1 for x in m.channel_mult):
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
  for name in ("model_channels", "num_res_blocks", "num_head_channels", "num_groups"):
    _check_int(f"model.{name}", m[name], 1)
  widths = [m.model_channels * mult for mult in m.channel_mult]
  attended = [ch for level, ch in enumerate(widths) if level == levels - 1 or reached[level] in m.attention_resolutions]
  for ch in widths:
    if ch % m.num_groups:
      _fail("model.num_groups", m.num_groups,
            f"GroupNorm needs every width divisible by it; {ch} is not (the widths are {widths}). "
            f"Set --config.model.num_groups={_largest_divisor(math.gcd(*widths), m.num_groups)}.")
  for ch in attended:
    if ch % m.num_head_channels:
      _fail("model.num_head_channels", m.num_head_channels,
            f"attention heads split {ch} channels, which is not a multiple of it (the attended widths are "
            f"{attended}). Set --config.model.num_head_channels="
            f"{_largest_divisor(math.gcd(*attended), m.num_head_channels)}.")
  if not (_is_number(m.dropout) and 0.0 <= m.dropout < 1.0):
    _fail("model.dropout", m.dropout, "it must be in [0, 1).")
  if m.dtype not in model_config.DTYPES and m.dtype != "auto":
    _fail("model.dtype", m.dtype, f"choose one of {tuple(model_config.DTYPES) + ('auto',)}.")
  if m.attention_impl not in model_config.ATTENTION_IMPLS + ("auto",):
    _fail("model.attention_impl", m.attention_impl, f"choose one of {model_config.ATTENTION_IMPLS + ('auto',)}.")
  if m.norm_impl not in model_config.NORM_IMPLS + ("auto",):
    _fail("model.norm_impl", m.norm_impl, f"choose one of {model_config.NORM_IMPLS + ('auto',)}.")
  if m.tokenizer not in TOKENIZER_NAMES:
    _fail("model.tokenizer", m.tokenizer, f"choose one of {TOKENIZER_NAMES}.")
  reason = tokenizer_unavailable_reason(m.tokenizer)
  if reason:
    _fail("model.tokenizer", m.tokenizer, f"{reason}. Use 'byte'.")
  _check_int("model.text_ctx", m.text_ctx, 1)
  _check_int("model.xf_layers", m.xf_layers, 0)
  if not (_is_int(m.xf_width) and _is_int(m.xf_heads) and m.xf_width >= 1 and m.xf_heads >= 1
          and m.xf_width % m.xf_heads == 0):
    _fail("model.xf_width/xf_heads", (m.xf_width, m.xf_heads), "the width must be a positive multiple of heads.")
  if not m.learn_sigma:
    _fail("model.learn_sigma", m.learn_sigma, "the hybrid loss and samplers need the learned-range variance.")
  if not isinstance(m.inpaint, bool):
    _fail("model.inpaint", m.inpaint, "give True (an inpainting model) or False.")
  if not isinstance(m.xf_causal, bool):
    _fail("model.xf_causal", m.xf_causal, "give True (each caption token reads the ones before it) or False "
          "(GLIDE's: every token reads all).")
  if not isinstance(m.xf_embedding_skip, bool):
    _fail("model.xf_embedding_skip", m.xf_embedding_skip, "give True (the UNet also reads each caption token's own "
          "embedding) or False (GLIDE's: the text transformer's features only).")
  if not isinstance(m.position_embedding, bool):
    _fail("model.position_embedding", m.position_embedding, "give True (learned image positions in attention) "
          "or False (GLIDE's blocks).")
  if not (_is_int(m.low_res_size) and 0 <= m.low_res_size < d.image_size):
    _fail("model.low_res_size", m.low_res_size, f"give 0 (not an upsampler) or the low-resolution size, below "
          f"data.image_size ({d.image_size}).")
  if m.attention_impl == "cudnn":
    dtype = model_config.resolve_kernels(m)["dtype"]
    heads = (m.num_head_channels, m.xf_width // m.xf_heads)
    why = model_config.cudnn_attention_unsupported(heads, dtype, model_config.platform())
    if why:
      _fail("model.attention_impl", m.attention_impl, f"cuDNN's fused attention cannot run here: {why}. "
            f"Use 'auto' or 'xla'.")


def _validate_diffusion(f: ml_collections.ConfigDict) -> None:
  _check_int("diffusion.num_timesteps", f.num_timesteps, 1)
  if f.noise_schedule not in SCHEDULE_NAMES:
    _fail("diffusion.noise_schedule", f.noise_schedule, f"choose one of {SCHEDULE_NAMES}.")
  if not (_is_number(f.snr_scale) and f.snr_scale > 0):
    _fail("diffusion.snr_scale", f.snr_scale, "it must be a number > 0 (1 = the schedule as named; 0.25 halves "
          "the signal's scale against the noise at every step).")


def _check_respacing(field: str, respacing, num_timesteps: int) -> None:
  if not isinstance(respacing, str):
    _fail(field, respacing, "give a string such as '100', '10,10,3,2,2', 'ddim50', 'fast27' or '' (all steps).")
  try:
    steps = space_timesteps(num_timesteps, respacing)
  except ConfigError as e:
    _fail(field, respacing, f"{e}")
  if not steps:
    _fail(field, respacing, "it keeps zero sampling steps; ask for at least 1.")


def _validate_train(t: ml_collections.ConfigDict, num_timesteps: int) -> None:
  _check_int("train.batch_size", t.batch_size, 1)
  micro = t.microbatch_size
  if not _is_int(micro) or micro < 0 or (micro and t.batch_size % micro):
    _fail("train.microbatch_size", t.microbatch_size,
          f"it must be 0 (off) or a divisor of train.batch_size ({t.batch_size}).")
  _check_int("train.num_steps", t.num_steps, 0)
  _check_int("train.warmup_steps", t.warmup_steps, 0)
  if not (_is_number(t.learning_rate) and t.learning_rate > 0):
    _fail("train.learning_rate", t.learning_rate, "it must be a positive number.")
  if t.lr_schedule not in LR_SCHEDULES:
    _fail("train.lr_schedule", t.lr_schedule, f"choose one of {tuple(LR_SCHEDULES)}.")
  if not (_is_number(t.lr_end_factor) and 0.0 <= t.lr_end_factor <= 1.0):
    _fail("train.lr_end_factor", t.lr_end_factor, "it is a fraction of train.learning_rate, in [0, 1].")
  if not (_is_number(t.min_snr_gamma) and t.min_snr_gamma >= 0.0):
    _fail("train.min_snr_gamma", t.min_snr_gamma, "it must be a number >= 0 (0 = no weighting; the paper uses 5).")
  if not (_is_number(t.text_encoder_lr_scale) and t.text_encoder_lr_scale >= 0.0):
    _fail("train.text_encoder_lr_scale", t.text_encoder_lr_scale, "it multiplies the text encoder's learning rate: a "
          "finite number >= 0 (1 = the UNet's rate, 0 = frozen).")
  for name in ("adam_b1", "adam_b2"):
    if not (_is_number(t[name]) and 0.0 <= t[name] < 1.0):
      _fail(f"train.{name}", t[name], "Adam's decay rates are in [0, 1).")
  if not (_is_number(t.p_uncond) and 0.0 <= t.p_uncond <= 1.0):
    _fail("train.p_uncond", t.p_uncond, "it is a probability, in [0, 1].")
  if not (_is_number(t.edit_composites) and 0.0 <= t.edit_composites <= 1.0):
    _fail("train.edit_composites", t.edit_composites, "it is the share of examples made into edit composites, in "
          "[0, 1].")
  if not (_is_number(t.ema_decay) and 0.0 <= t.ema_decay < 1.0):
    _fail("train.ema_decay", t.ema_decay, "it must be in [0, 1).")
  if not (_is_number(t.grad_clip) and t.grad_clip > 0):
    _fail("train.grad_clip", t.grad_clip, "it must be positive.")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
    _check_int(f"train.{name}", t[name], 1)
  _check_int("train.sample_every", t.sample_every, 0, " (0 = never)")
  if not (_is_number(t.sample_guidance) and t.sample_guidance >= 0):
    _fail("train.sample_guidance", t.sample_guidance, "it must be a finite number >= 0.")
  _check_respacing("train.sample_respacing", t.sample_respacing, num_timesteps)
  if not isinstance(t.init_from, str):
    _fail("train.init_from", t.init_from, "give the workdir of a base run, or '' to start from random weights.")


def _validate_upsampler(c: ml_collections.ConfigDict) -> None:
  if c.model.low_res_size and c.train.sample_every:
    _fail("train.sample_every", c.train.sample_every, "an upsampler's samples need a base model's: set it to 0 "
          "and sample the cascade with --mode=sample and config.sample.base_workdir.")


def _validate_edit(e: ml_collections.ConfigDict) -> None:
  for name, example in (("images", "'test:0,1,2' or 'digit.png'"), ("mask", "'bottom' or 'box:0,16,32,32'")):
    if not (isinstance(e[name], str) and e[name].strip()):
      _fail(f"edit.{name}", e[name], f"give {example}.")
  if not isinstance(e.prompts, str):
    _fail("edit.prompts", e.prompts, "give comma-separated prompts, or '' for one per class.")
  if e.prompts and not split_prompts(e.prompts):
    _fail("edit.prompts", e.prompts, "it holds no prompt: give comma-separated prompts such as 'a seven,9', or '' "
          "for one per class.")
  try:
    scales = guidance_scales(e)
  except (TypeError, ValueError):
    _fail("edit.guidance_scales", e.guidance_scales, "give numbers, e.g. --config.edit.guidance_scales='(1., 3.)'.")
  if not scales or any(not math.isfinite(x) or x < 0 for x in scales):
    _fail("edit.guidance_scales", e.guidance_scales, "give at least one finite number >= 0.")
  _check_int("edit.eval_images", e.eval_images, 1)
  if e.targets not in EDIT_TARGETS:
    _fail("edit.targets", e.targets, "give 'next' (each image edited to (label + 1) mod classes) or 'all' (to every "
          "other class).")
  if not isinstance(e.base_workdir, str):
    _fail("edit.base_workdir", e.base_workdir, "give a base run's workdir, or '' for train.init_from.")


def _validate_sample(s: ml_collections.ConfigDict, num_timesteps: int) -> None:
  try:
    scales = guidance_scales(s)
  except (TypeError, ValueError):
    _fail("sample.guidance_scales", s.guidance_scales,
          "give numbers, e.g. --config.sample.guidance_scales='(0., 1., 4.)'.")
  if not scales:
    _fail("sample.guidance_scales", s.guidance_scales, "give at least one scale, e.g. (0., 1., 4.).")
  bad = [x for x in scales if not (math.isfinite(x) and x >= 0)]
  if bad:
    _fail("sample.guidance_scales", s.guidance_scales,
          f"it has {bad}: scales must be finite and >= 0 (0 = unconditional, 1 = conditional, > 1 = guided).")
  if s.sampler not in SAMPLERS:
    _fail("sample.sampler", s.sampler, f"choose one of {tuple(SAMPLERS)}.")
  if s.guidance not in GUIDANCE:
    _fail("sample.guidance", s.guidance, f"choose one of {tuple(GUIDANCE)}.")
  _check_respacing("sample.respacing", s.respacing, num_timesteps)
  if not (_is_number(s.ddim_eta) and s.ddim_eta >= 0):
    _fail("sample.ddim_eta", s.ddim_eta, "it must be a finite number >= 0.")
  interval = s.guidance_interval
  if not (isinstance(interval, (tuple, list)) and len(interval) == 2 and all(_is_number(x) for x in interval)
          and 0.0 <= interval[0] < interval[1] <= 1.0):
    _fail("sample.guidance_interval", interval, "give (lo, hi) with 0 <= lo < hi <= 1, fractions of the "
          "diffusion's timesteps, e.g. --config.sample.guidance_interval='(0.1, 0.8)'; (0., 1.) = every step.")
  if not (_is_number(s.apg_eta) and 0 <= s.apg_eta <= 1):
    _fail("sample.apg_eta", s.apg_eta, "it must be a number from 0 (the paper's default: only the update's part "
          "orthogonal to the conditional x̂_0) to 1 (all of it, as classifier-free guidance).")
  if not (_is_number(s.apg_norm_threshold) and s.apg_norm_threshold >= 0):
    _fail("sample.apg_norm_threshold", s.apg_norm_threshold, "it must be a finite number >= 0 (0 = no bound).")
  if s.guidance != "adaptive_projected" and (s.apg_eta or s.apg_norm_threshold):
    _fail("sample.apg_eta" if s.apg_eta else "sample.apg_norm_threshold", s.apg_eta or s.apg_norm_threshold,
          "only adaptive projected guidance reads it: add --config.sample.guidance=adaptive_projected, or leave it "
          "unset.")
  _check_int("sample.guide_step", s.guide_step, 0)
  if not isinstance(s.guide_workdir, str):
    _fail("sample.guide_workdir", s.guide_workdir, "give the workdir of another run of the same model, or ''.")
  if s.guidance == "autoguidance" and not (s.guide_step or s.guide_workdir):
    _fail("sample.guidance", s.guidance, "autoguidance needs a guide: an earlier checkpoint of this run "
          "(--config.sample.guide_step=STEP) or another run of the same model (--config.sample.guide_workdir=DIR).")
  if s.guidance != "autoguidance":
    for name in ("guide_step", "guide_workdir"):
      if s[name]:
        _fail(f"sample.{name}", s[name], "only autoguidance reads it: add --config.sample.guidance=autoguidance, "
              "or leave it unset.")
  if not isinstance(s.clip_workdir, str):
    _fail("sample.clip_workdir", s.clip_workdir, "give the workdir of a noised CLIP (--mode=train_clip or "
          "--mode=convert --model=clip), or ''.")
  if s.guidance == "clip" and not s.clip_workdir:
    _fail("sample.guidance", s.guidance, "CLIP guidance needs a noised CLIP: --config.sample.clip_workdir=DIR, a run "
          "of --mode=train_clip (or --mode=convert --model=clip).")
  if s.guidance != "clip" and s.clip_workdir:
    _fail("sample.clip_workdir", s.clip_workdir, "only CLIP guidance reads it: add --config.sample.guidance=clip, "
          "or leave it unset.")
  _check_int("sample.num_per_prompt", s.num_per_prompt, 1)
  _check_int("sample.batch_size", s.batch_size, 1)
  if not isinstance(s.use_ema, bool):
    _fail("sample.use_ema", s.use_ema, "it must be True or False.")
  if not isinstance(s.prompts, str):
    _fail("sample.prompts", s.prompts, "give comma-separated prompts such as '7,seven,3', or '' for one per class.")
  if s.prompts and not split_prompts(s.prompts):
    _fail("sample.prompts", s.prompts, "it holds no prompt: give comma-separated prompts such as '7,seven,3', or "
          "leave it empty for one prompt per class.")
  if not isinstance(s.prompt_file, str):
    _fail("sample.prompt_file", s.prompt_file, "give the path of a UTF-8 file with one prompt per line, or ''.")
  if s.prompt_file:
    read_prompt_file(s.prompt_file)
  if not isinstance(s.base_workdir, str):
    _fail("sample.base_workdir", s.base_workdir, "give the base model's workdir (for an upsampler), or ''.")
  if not (_is_number(s.upsample_temp) and 0 < s.upsample_temp <= 2):
    _fail("sample.upsample_temp", s.upsample_temp, "give the initial noise's scale, in (0, 2], e.g. 0.997.")


def _validate_eval(e: ml_collections.ConfigDict) -> None:
  """config.eval: sample counts and the evaluation classifier's training settings."""
  for name, least in (("samples_per_digit", 2), ("batch_size", 1), ("classifier_steps", 1),
                      ("classifier_batch_size", 1)):
    why = " (the diversity figure compares samples of one class pairwise)" if name == "samples_per_digit" else ""
    _check_int(f"eval.{name}", e[name], least, why)
  lr = e.classifier_learning_rate
  if not (_is_number(lr) and lr > 0):
    _fail("eval.classifier_learning_rate", lr, "it must be a positive number.")
  if not isinstance(e.output_dir, str):
    _fail("eval.output_dir", e.output_dir, "it must be a directory path (relative to WORKDIR), or '' for WORKDIR/eval.")
  if not isinstance(e.shipped_classifier, bool):
    _fail("eval.shipped_classifier", e.shipped_classifier, "it must be True or False.")
  if not isinstance(e.classifier_dir, str):
    _fail("eval.classifier_dir", e.classifier_dir, "it must be a directory path, or '' for the default cache.")
  if e.classifier_dir and os.path.exists(os.path.expanduser(e.classifier_dir)) and not os.path.isdir(
      os.path.expanduser(e.classifier_dir)):
    _fail("eval.classifier_dir", e.classifier_dir, "it is a file; give a directory (it need not exist yet).")
  if not (isinstance(e.classifier_train_split, str) and e.classifier_train_split.strip()):
    _fail("eval.classifier_train_split", e.classifier_train_split, "give a TFDS split such as 'train'.")
  if not isinstance(e.classifier_augment, bool):
    _fail("eval.classifier_augment", e.classifier_augment, "it must be True or False.")


def _validate_clip(k: ml_collections.ConfigDict, d: ml_collections.ConfigDict) -> None:
  """config.clip: the noised CLIP's sizes (its image size and channels are data's)."""
  for name in ("patch_size", "image_heads", "image_head_width", "image_blocks", "text_heads", "text_head_width",
               "text_blocks", "embed_dim"):
    _check_int(f"clip.{name}", k[name], 1)
  if _is_int(d.image_size) and d.image_size % k.patch_size:
    _fail("clip.patch_size", k.patch_size, f"the image encoder cuts data.image_size ({d.image_size}) into patches: "
          f"give a divisor of it, e.g. 4.")
  if not (_is_int(k.n_vocab) and (k.n_vocab == 0 or k.n_vocab >= CLIP_VOCAB_SIZE)):
    _fail("clip.n_vocab", k.n_vocab, f"give 0 (CLIP's {CLIP_VOCAB_SIZE:,} BPE ids) or a table at least that large.")
  _check_int("clip.max_text_len", k.max_text_len, 2, " (a prompt's tokens start with SOT and end with EOT)")
  if not (_is_number(k.logit_scale) and k.logit_scale > 0):
    _fail("clip.logit_scale", k.logit_scale, "it must be a positive number (the release's is 100).")


def _validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  shape = mesh.shape
  if isinstance(shape, int) and not isinstance(shape, bool):
    shape = (shape,)
  if not (isinstance(shape, (tuple, list)) and 1 <= len(shape) <= 2 and all(_is_int(s) for s in shape)
          and all(s >= 1 or s == -1 for s in shape) and list(shape).count(-1) <= 1):
    _fail("mesh.shape", mesh.shape, "give (data, fsdp) sizes as positive integers with at most one -1 (all "
          "remaining devices), e.g. (-1, 1) for data parallelism over every device.")
