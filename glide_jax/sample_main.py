"""--mode=sample: the guidance sweep from the latest checkpoint, written as PNGs and samples.npz."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from glide_jax import images as images_lib
from glide_jax import sharding as sharding_lib
from glide_jax.errors import UserError
from glide_jax.sampling import GuidedSampler
from glide_jax.train import Experiment


def parse_prompts(config: ml_collections.ConfigDict, class_names: Sequence[str]) -> list[str]:
  """config.sample.prompts (comma-separated) or config.sample.prompt_file (one per line, UTF-8);
  by default one prompt per class ("zero" … "nine")."""
  s = config.sample
  if s.prompt_file:
    try:
      with open(s.prompt_file, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
      raise UserError(f"The prompt file {s.prompt_file} is not UTF-8 text ({e.reason} at byte {e.start}); "
                      f"save it as UTF-8.") from None
    except OSError as e:
      raise UserError(f"Cannot read the prompt file {s.prompt_file}: {e.strerror}.") from None
    if not prompts:
      raise UserError(f"The prompt file {s.prompt_file} has no prompts: write one prompt per line.")
    return prompts
  if not s.prompts:
    return list(class_names)
  prompts = [p.strip() for p in s.prompts.split(",") if p.strip()]
  if not prompts:
    raise UserError(f"config.sample.prompts = {s.prompts!r} holds no prompt: give comma-separated prompts "
                    f"such as '7,seven,3', or leave it empty for one prompt per class.")
  return prompts


def class_of_prompt(prompt: str, class_names: Sequence[str]) -> int:
  """The class a prompt names exactly (its word or numeral), or −1."""
  text = prompt.strip().lower()
  for k, name in enumerate(class_names):
    if text in (name.lower(), str(k)):
      return k
  return -1


def check_guidance_scales(scales: Sequence[float]) -> list[float]:
  try:
    scales = [float(s) for s in scales]
  except (TypeError, ValueError):
    raise UserError(f"config.sample.guidance_scales = {tuple(scales)!r} is invalid: give numbers, "
                    f"e.g. --config.sample.guidance_scales='(0., 1., 4.)'.") from None
  if not scales:
    raise UserError("config.sample.guidance_scales is empty: give at least one scale, e.g. (0., 1., 4.).")
  bad = [s for s in scales if not np.isfinite(s) or s < 0]
  if bad:
    raise UserError(f"config.sample.guidance_scales has {bad}: scales must be finite and >= 0 "
                    f"(0 = unconditional, 1 = conditional, > 1 = guided).")
  return scales


def sample_in_batches(sampler: GuidedSampler, params: Any, tokens: np.ndarray, mask: np.ndarray,
                      scales: np.ndarray, rng: jax.Array, batch_size: int, num_devices: int) -> np.ndarray:
  """Samples any number of (prompt, scale) rows in batches padded to a multiple of the device count."""
  step = max(num_devices, batch_size // num_devices * num_devices)
  outputs = []
  for i, start in enumerate(range(0, len(tokens), step)):
    sl = slice(start, start + step)
    n = len(tokens[sl])
    pad = (-n) % num_devices
    t, m, s = (np.concatenate([a[sl], np.repeat(a[sl][-1:], pad, axis=0)]) for a in (tokens, mask, scales))
    x = sampler(params, t, m, s, jax.random.fold_in(rng, i))
    outputs.append(sharding_lib.to_host(x)[:n])
  return np.concatenate(outputs)


def sample_grid(exp: Experiment, params: Any, prompts: Sequence[str], scales: Sequence[float], num_per_prompt: int,
                rng: jax.Array, sampler: Optional[GuidedSampler] = None) -> np.ndarray:
  """uint8 samples [P, S, K, H, W, C] for every prompt, guidance scale and repeat."""
  c = exp.config
  sampler = sampler or GuidedSampler(exp.model, exp.diffusion, c.sample.sampler, c.sample.respacing,
                                     c.sample.ddim_eta, exp.tokenizer.pad_id, exp.mesh)
  p, s, k = len(prompts), len(scales), num_per_prompt
  tokens, mask = exp.tokenizer.tokenize_batch(list(prompts), c.model.text_ctx)
  rows = np.array([(i, j) for i in range(p) for j in range(s) for _ in range(k)])
  flat = sample_in_batches(sampler, params, tokens[rows[:, 0]], mask[rows[:, 0]],
                           np.asarray(scales, np.float32)[rows[:, 1]], rng, c.sample.batch_size, exp.mesh.size)
  return images_lib.to_uint8(flat).reshape(p, s, k, *flat.shape[1:])


def load_params(exp: Experiment, workdir: str, use_ema: bool = True) -> tuple[Any, int]:
  """(EMA or raw parameters, step) of the latest checkpoint in workdir; a UserError when there is none."""
  checkpointer = exp.checkpointer(workdir, read_only=True)
  if checkpointer.latest_step() is None:
    raise UserError(f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first with "
                    f"`python main.py --config=... --workdir={workdir}` (sampling and evaluation need one).")
  state = exp.restore_or_init(checkpointer)
  checkpointer.close()
  return (state.ema_params if use_ema else state.params), int(jax.device_get(state.step))


def sample_and_save(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Samples the guidance sweep from workdir's latest checkpoint; returns the paths written."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} does not exist: point it at a training run's directory.")
  exp = Experiment.from_config(config)
  s = config.sample
  from glide_jax import data as data_lib
  class_names = data_lib.class_names_of(config.data)
  prompts = parse_prompts(config, class_names)
  scales = check_guidance_scales(s.guidance_scales)
  if s.num_per_prompt < 1 or s.batch_size < 1:
    raise UserError("config.sample.num_per_prompt and config.sample.batch_size must be at least 1.")
  params, step = load_params(exp, workdir, s.use_ema)
  grid = sample_grid(exp, params, prompts, scales, s.num_per_prompt, jax.random.key(config.seed))
  out_dir = os.path.join(workdir, "samples")
  paths = {}
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    p, n_scales, k = grid.shape[:3]
    for j, scale in enumerate(scales):
      path = os.path.join(out_dir, f"guidance_{scale:g}.png")
      images_lib.save_png(path, images_lib.make_grid(grid[:, j].transpose(1, 0, 2, 3, 4).reshape(-1, *grid.shape[3:]),
                                                     rows=k, cols=p))
      paths[f"grid_{scale:g}"] = path
    paths["figure"] = os.path.join(out_dir, "guidance_sweep.png")
    images_lib.save_png(paths["figure"], images_lib.sweep_figure(grid, prompts, scales))
    paths["npz"] = os.path.join(out_dir, "samples.npz")
    np.savez_compressed(
        paths["npz"], images=grid.reshape(-1, *grid.shape[3:]),
        prompts=np.repeat(np.array(prompts), n_scales * k),
        digits=np.repeat(np.array([class_of_prompt(q, class_names) for q in prompts]), n_scales * k),
        guidance=np.tile(np.repeat(np.array(scales, np.float32), k), p), step=step)
    print(f"Wrote {len(scales)} grids, {paths['figure']} and {paths['npz']} (checkpoint step {step}, "
          f"{'EMA' if s.use_ema else 'raw'} parameters).", flush=True)
  return paths
