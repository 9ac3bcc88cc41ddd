"""The PyTorch reference for docs/benchmarks.md: OpenAI's glide-text2im UNet at a glide-jax config's shapes.

  bash scripts/torch_reference.sh --preset=mnist_cpu32 --batch=32 --sample_batch=16

Times, on the CPU, the same work as `python main.py --mode=benchmark` on the same shapes, in PyTorch with
OpenAI's own modules (`Text2ImUNet` from glide-text2im, imported from --glide_text2im, never copied here):

- a training step: GLIDE's cosine schedule, x_t from random images shaped like MNIST, 20% of prompts
  dropped to the empty one, the hybrid loss (L_simple, Min-SNR-γ weighted where the config is, plus L_vlb
  through the learned-range variance with a frozen mean), backward, gradient clipping at 1.0, Adam and the
  EMA update;
- a guided sampling step: one forward pass on 2 x samples rows (conditional and unconditional, as
  glide-jax batches them) and the DDPM update.

Each is the median of --steps timed steps after one warm-up step. `scripts/torch_reference.sh` runs it in
a venv of its own with PyTorch's CPU build, so the project's environment never gets torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

# The glide-jax configs these stand for (tests/test_scripts.py checks each field against them).
PRESETS = {
    # configs/mnist_cpu.py at 32 channels: --config.model.model_channels=32 --config.model.num_groups=32
    # --config.model.num_head_channels=64 (the "32-channel model").
    "mnist_cpu32": dict(config="configs/mnist_cpu.py",
                        overrides=dict(model_channels=32, num_groups=32, num_head_channels=64),
                        image_size=32, channels=1, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                        attention_resolutions=(8,), num_head_channels=64, dropout=0.1, text_ctx=16, xf_width=64,
                        xf_layers=2, xf_heads=4, vocab_size=257, min_snr_gamma=5.0),
    # configs/mnist.py: the reference lesson's full model.
    "mnist": dict(config="configs/mnist.py", overrides={},
                  image_size=32, channels=1, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                  attention_resolutions=(16,), num_head_channels=64, dropout=0.1, text_ctx=128, xf_width=128,
                  xf_layers=6, xf_heads=2, vocab_size=257, min_snr_gamma=0.0),
}
NUM_TIMESTEPS = 1000
P_UNCOND = 0.2


def cosine_betas(num_timesteps: int) -> list[float]:
  """GLIDE's "squaredcos_cap_v2" schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999."""
  def alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
          for i in range(num_timesteps)]


def build_model(preset: dict, torch):
  """glide-text2im's Text2ImUNet with the preset's shapes (learned sigma: 2 output channels per channel)."""
  from glide_text2im.text2im_model import Text2ImUNet

  class Vocabulary:
    n_vocab = preset["vocab_size"]

  return Text2ImUNet(
      text_ctx=preset["text_ctx"], xf_width=preset["xf_width"], xf_layers=preset["xf_layers"],
      xf_heads=preset["xf_heads"], xf_final_ln=True, tokenizer=Vocabulary(), xf_padding=True,
      in_channels=preset["channels"], model_channels=preset["model_channels"], out_channels=2 * preset["channels"],
      num_res_blocks=preset["num_res_blocks"],
      attention_resolutions=tuple(preset["image_size"] // r for r in preset["attention_resolutions"]),
      dropout=preset["dropout"], channel_mult=preset["channel_mult"], conv_resample=False,
      num_head_channels=preset["num_head_channels"], use_scale_shift_norm=True, resblock_updown=False)


class Diffusion:
  """The tables of GLIDE's Gaussian diffusion (Ho et al. 2020, eqs. 4, 6, 7) as float32 tensors."""

  def __init__(self, torch):
    betas = torch.tensor(cosine_betas(NUM_TIMESTEPS), dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    tables = dict(
        sqrt_ab=alphas_cumprod.sqrt(), sqrt_1mab=(1 - alphas_cumprod).sqrt(),
        sqrt_recip_ab=(1 / alphas_cumprod).sqrt(), sqrt_recipm1_ab=(1 / alphas_cumprod - 1).sqrt(),
        log_beta=betas.log(),
        log_var_clipped=torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
        coef1=betas * prev.sqrt() / (1 - alphas_cumprod), coef2=(1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        snr=alphas_cumprod / (1 - alphas_cumprod))
    self.t = {k: v.float() for k, v in tables.items()}

  def at(self, name, t):
    return self.t[name][t].view(-1, 1, 1, 1)

  def mean_and_log_var(self, model_out, x_t, t):
    """The learned-range variance (Nichol & Dhariwal 2021, eq. 15) and the posterior mean of ε's x_0."""
    eps, v = model_out.chunk(2, dim=1)
    frac = (v + 1) / 2
    log_var = frac * self.at("log_beta", t) + (1 - frac) * self.at("log_var_clipped", t)
    x0 = self.at("sqrt_recip_ab", t) * x_t - self.at("sqrt_recipm1_ab", t) * eps
    return self.at("coef1", t) * x0 + self.at("coef2", t) * x_t, log_var, eps


def train_step_fn(model, preset, diffusion, torch):
  """One step of the hybrid loss with conditioning dropout, clipping, Adam and the EMA."""
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  gamma = preset["min_snr_gamma"]

  def step(x0, tokens, mask):
    batch = x0.shape[0]
    t = torch.randint(0, NUM_TIMESTEPS, (batch,))
    keep = (torch.rand(batch) >= P_UNCOND)[:, None]
    noise = torch.randn_like(x0)
    x_t = diffusion.at("sqrt_ab", t) * x0 + diffusion.at("sqrt_1mab", t) * noise
    out = model(x_t, t, tokens=tokens * keep, mask=mask & keep)
    eps, v = out.chunk(2, dim=1)
    weight = torch.clamp(diffusion.at("snr", t), max=gamma) / diffusion.at("snr", t) if gamma > 0 else 1.0
    mse = (weight * (eps - noise) ** 2).mean()
    mean, log_var, _ = diffusion.mean_and_log_var(torch.cat([eps.detach(), v], 1), x_t, t)
    true_mean = diffusion.at("coef1", t) * x0 + diffusion.at("coef2", t) * x_t
    true_log_var = diffusion.at("log_var_clipped", t)
    kl = 0.5 * (-1 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                + (true_mean - mean) ** 2 * torch.exp(-log_var))
    loss = mse + (kl.mean() / math.log(2)) * NUM_TIMESTEPS / 1000
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.999)
    return loss

  return step


def sample_step_fn(model, diffusion, torch, guidance: float = 3.0):
  """One classifier-free guided DDPM step: one forward pass on [conditional; unconditional] rows."""
  @torch.inference_mode()
  def step(x_t, t, tokens, mask):
    rows = torch.cat([x_t, x_t])
    out = model(rows, torch.cat([t, t]), tokens=torch.cat([tokens, torch.zeros_like(tokens)]),
                mask=torch.cat([mask, torch.zeros_like(mask)]))
    cond, uncond = out.chunk(2)
    eps = uncond[:, :1] + guidance * (cond[:, :1] - uncond[:, :1])
    mean, log_var, _ = diffusion.mean_and_log_var(torch.cat([eps, cond[:, 1:]], 1), x_t, t)
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(x_t) * (t > 0).float().view(-1, 1, 1, 1)

  return step


def median_seconds(fn, steps: int) -> tuple[float, list[float]]:
  fn()  # warm-up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="mnist_cpu32")
  parser.add_argument("--batch", type=int, action="append", help="training batch sizes (default 32)")
  parser.add_argument("--sample_batch", type=int, action="append", help="samples per guided step (default 16)")
  parser.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up step)")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
  parser.add_argument("--glide_text2im", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                              "reference", "glide-text2im"),
                      help="a checkout of github.com/openai/glide-text2im")
  parser.add_argument("--json", default="", help="also write the figures to this file")
  args = parser.parse_args(argv)
  if not os.path.isfile(os.path.join(args.glide_text2im, "glide_text2im", "text2im_model.py")):
    print(f"error: no glide-text2im checkout at {args.glide_text2im}; clone "
          "https://github.com/openai/glide-text2im and pass its path as --glide_text2im", file=sys.stderr)
    return 2
  sys.path.insert(0, os.path.abspath(args.glide_text2im))
  import torch

  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  preset = PRESETS[args.preset]
  model = build_model(preset, torch)
  diffusion = Diffusion(torch)
  ctx, size, chans = preset["text_ctx"], preset["image_size"], preset["channels"]
  result = dict(preset=args.preset, torch=torch.__version__, threads=torch.get_num_threads(),
                parameters=sum(p.numel() for p in model.parameters()), train={}, sample={})
  print(f"PyTorch {torch.__version__}, {result['threads']} threads, {args.preset}: "
        f"{result['parameters']:,} parameters")

  def prompts(batch):
    tokens = torch.randint(1, preset["vocab_size"], (batch, ctx))
    mask = torch.arange(ctx)[None] < torch.randint(1, 6, (batch, 1))  # MNIST prompts are 1-5 tokens.
    return tokens * mask, mask

  model.train()
  train_step = train_step_fn(model, preset, diffusion, torch)
  for batch in args.batch or [32]:
    x0 = torch.rand(batch, chans, size, size) * 2 - 1
    tokens, mask = prompts(batch)
    median, times = median_seconds(lambda: train_step(x0, tokens, mask), args.steps)
    result["train"][batch] = dict(step_s=median, steps_s=times)
    print(f"train step, batch {batch}: {median:.3f} s (median of {args.steps}; {batch / median:.1f} images/s)")
  model.eval()
  sample_step = sample_step_fn(model, diffusion, torch)
  for batch in args.sample_batch or [16]:
    x_t = torch.randn(batch, chans, size, size)
    t = torch.full((batch,), NUM_TIMESTEPS // 2)
    tokens, mask = prompts(batch)
    median, times = median_seconds(lambda: sample_step(x_t, t, tokens, mask), args.steps)
    result["sample"][batch] = dict(step_s=median, steps_s=times)
    print(f"guided sampling step, {batch} samples: {median:.3f} s (median of {args.steps})")
  result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"peak RSS {result['peak_rss_gb']:.2f} GB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
