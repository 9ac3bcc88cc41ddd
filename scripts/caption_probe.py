"""Which words a scenes model reads, and at which noise levels: its ε-MSE on real scenes with their own caption
against the same scenes with a caption that moves the digits (placement), names another digit (identity), or
is empty (no text), at the same x_0, t and noise.

  python scripts/caption_probe.py --workdir=runs/mnist_scenes_cpu [--split=held_out] [--scenes=96] [--repeats=4]

For each t it prints SNR(t), the true caption's MSE and each other caption's mean increase Δ over it with its
standard error (over scenes x noise draws): Δ > 0 where the model's prediction depends on what that caption
changes. "Placement" swaps a relation's digits ("a 3 to the left of a 7" → "a 7 to the left of a 3") or moves
a corner's digit to the opposite corner; "identity" replaces the first digit by the next one (mod 10). Scenes
of "two" (no placement to change) and of two equal digits are left out. The model and its diffusion are the
workdir's (its saved config); EMA parameters. Nothing is downloaded: the scenes come from MNIST in
$TFDS_DATA_DIR.

Then whether the text encoder's features say which digit of a relation goes first (left or on top): a linear
probe of each digit token's role from its own feature, fitted on the training facts' captions and read on the
held-out facts' (chance 0.5), for the run's encoder and for a freshly initialised one.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TIMESTEPS = (999, 950, 900, 850, 800, 700, 600, 500, 300, 100)  # Of T = 1000; others are scaled to T.
KINDS = ("placement", "identity", "no text")


def other_captions(caption: str) -> dict[str, str] | None:
  """The probe's captions for a scene captioned `caption`: true, placement, identity, no text; None for a
  scene with no placement to change."""
  from glide_jax import scenes
  fact = scenes.fact_of(caption)
  if fact[0] in ("left", "above") and fact[1] != fact[2]:
    moved = (fact[0], fact[2], fact[1])
  elif fact[0] == "corner":
    moved = ("corner", fact[1], scenes.GRID * scenes.GRID - 1 - fact[2])
  else:
    return None
  other_digit = (fact[0], (fact[1] + 1) % 10, *fact[2:])
  return {"true": caption, "placement": scenes.captions_of(moved)[0], "identity": scenes.captions_of(other_digit)[0],
          "no text": ""}


def probe(exp, params, images, captions, timesteps, repeats: int) -> list[dict]:
  """Per t: {"t", "snr", "mse": the true caption's, "delta": {kind: (mean Δ, standard error)}} for uint8
  scenes [N, H, W, C] and their `other_captions`."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from glide_jax.data import to_model_range

  d, c = exp.diffusion, exp.config
  x0 = jnp.asarray(to_model_range(np.asarray(images)))
  rows = {k: [caps[k] for caps in captions] for k in ("true",) + KINDS}
  tokens = {k: tuple(map(jnp.asarray, exp.tokenizer.tokenize_batch(v, c.model.text_ctx))) for k, v in rows.items()}

  @jax.jit  # Parameters and images are arguments, not constants folded into the program.
  def mse(params, x0, t, noise, tokens, mask):
    tt = jnp.full((x0.shape[0],), t)
    eps = exp.model.apply({"params": params}, d.q_sample(x0, tt, noise), tt, tokens, mask)[..., :x0.shape[-1]]
    return jnp.mean((eps - noise) ** 2, axis=(1, 2, 3))

  out = []
  for t in timesteps:
    per_kind = {k: [] for k in rows}
    for r in range(repeats):
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(r), t), x0.shape)
      for k, (tok, mask) in tokens.items():
        per_kind[k].append(np.asarray(mse(params, x0, t, noise, tok, mask)))
    true = np.concatenate(per_kind["true"])
    deltas = {k: np.concatenate(per_kind[k]) - true for k in KINDS}
    snr = d.alphas_cumprod[t] / (1.0 - d.alphas_cumprod[t])
    out.append({"t": int(t), "snr": float(snr), "mse": float(true.mean()),
                "delta": {k: (float(v.mean()), float(v.std() / np.sqrt(len(v)))) for k, v in deltas.items()}})
  return out


@functools.lru_cache(maxsize=None)
def _text_encoder(model):
  """model's text encoder as one compiled program (run op by op it compiles each of its operations)."""
  import jax
  return jax.jit(lambda params, tokens, mask: model.apply({"params": params}, tokens, mask, method=model.encode_text))


@functools.lru_cache(maxsize=None)
def _initialiser(model):
  import jax

  from glide_jax.model.text2im import init_params
  return jax.jit(functools.partial(init_params, model))


def digit_token_roles(exp, params, facts) -> tuple:
  """(features [N, W]: xf_out's width, roles [N]) of the two digit tokens of every caption of the relation `facts` with
  two different digits: role 1 for the digit that goes left (or on top), which word order and the relation word
  decide together ("a 3 to the left of a 7": the 3; "a 7 to the right of a 3": the 3, now second)."""
  import jax.numpy as jnp
  import numpy as np

  from glide_jax import scenes

  rows = [(cap, j) for f in facts if f[0] in ("left", "above") and f[1] != f[2]
          for j, cap in enumerate(scenes.captions_of(f))]
  tokens, mask = exp.tokenizer.tokenize_batch([cap for cap, _ in rows], exp.config.model.text_ctx)
  xf_out, _ = _text_encoder(exp.model)(params, jnp.asarray(tokens), jnp.asarray(mask))
  xf_out = np.asarray(xf_out, np.float64)
  digit_ids = {exp.tokenizer.encode(f" {d}")[-1] for d in range(10)}
  features, roles = [], []
  for i, (_, phrasing) in enumerate(rows):  # Phrasing 0 names the left (top) digit first, phrasing 1 second.
    first, second = [k for k in range(tokens.shape[1]) if mask[i, k] and tokens[i, k] in digit_ids]
    features += [xf_out[i, first], xf_out[i, second]]
    roles += [int(phrasing == 0), int(phrasing == 1)]
  return np.array(features), np.array(roles)


def variance_share(features, groups) -> float:
  """The share of the features' total variance that their group means hold (between-group over total sum of
  squares): how much of what a linear projection of the features sees is the grouping."""
  import numpy as np

  features, groups = np.asarray(features, np.float64), np.asarray(groups)
  centred = features - features.mean(0)
  means = np.zeros_like(centred)
  for g in np.unique(groups):
    means[groups == g] = centred[groups == g].mean(0)
  return float((means ** 2).sum() / (centred ** 2).sum())


def role_probe(exp, params, ridge: float = 1e-2) -> dict:
  """{relation: (accuracy on the training facts' captions, on the held-out facts', the role's share of the
  features' variance on the training facts)} of a ridge regression of a digit token's role
  (`digit_token_roles`) on its standardised feature, fitted on the training facts. The share says how strong
  the role is where the accuracy says only whether it can be read: a direction holding 0.1% of the variance
  is readable by ridge regression, and all but invisible to a key projection that training has to find."""
  import numpy as np

  from glide_jax import scenes

  spec = exp.config.data.scenes
  held = scenes.held_out_facts(spec.seed, spec.held_out)
  out = {}
  for kind in ("left", "above"):
    facts = [f for f in scenes.all_facts() if f[0] == kind]
    x_fit, y_fit = digit_token_roles(exp, params, [f for f in facts if f not in held])
    x_held, y_held = digit_token_roles(exp, params, [f for f in facts if f in held])
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-8
    design = lambda x: np.c_[(x - mean) / std, np.ones(len(x))]  # noqa: E731
    a = design(x_fit)
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ (2.0 * y_fit - 1.0))
    out[kind] = tuple(float(np.mean((design(x) @ w > 0) == y)) for x, y in ((x_fit, y_fit), (x_held, y_held)))
    out[kind] += (variance_share(x_fit, y_fit),)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="held_out", help="the scenes split: held_out, test or train")
  parser.add_argument("--scenes", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=4, help="noise draws per scene and t")
  args = parser.parse_args(argv)

  from glide_jax.errors import report_errors
  report_errors(run, args)


def run(args: argparse.Namespace) -> None:
  import jax
  import numpy as np

  from glide_jax import data as data_lib
  from glide_jax.errors import UserError
  from glide_jax.experiment import Experiment

  exp = Experiment.from_workdir(args.workdir)
  if exp.config.data.source != "mnist_scenes":
    raise UserError(f"{args.workdir} trained on data.source = {exp.config.data.source!r}; the probe reads a model "
                    f"of the MNIST scenes (configs/mnist_scenes_cpu.py), whose captions it can change.")
  params, step = exp.load_params()
  dataset = data_lib.load_dataset(exp.config.data, args.split)
  picked, captions = [], []
  for i, caps in enumerate(dataset.captions):
    other = other_captions(caps[0])
    if other and len(picked) < args.scenes:
      picked.append(i)
      captions.append(other)
  T = exp.diffusion.num_timesteps
  timesteps = sorted({min(T - 1, round(t * T / 1000)) for t in TIMESTEPS}, reverse=True)
  rows = probe(exp, params, np.asarray(dataset.images)[picked], captions, timesteps, args.repeats)
  print(f"{args.workdir} (step {step}), {len(picked)} scenes of {args.split!r} x {args.repeats} noise draws; "
        f"Δ = MSE(other caption) - MSE(true caption), mean ± standard error")
  print(f"{'t':>5} {'SNR':>9} {'MSE true':>9} " + " ".join(f"{k:>19}" for k in KINDS))
  for r in rows:
    print(f"{r['t']:5d} {r['snr']:9.4f} {r['mse']:9.5f} "
          + " ".join(f"{m:+9.5f} ± {s:7.5f}" for m, s in (r["delta"][k] for k in KINDS)))
  print("Is a relation's digit token the left (top) one? A linear probe of its text-encoder feature, fitted on the "
        "training facts' captions; accuracy there / on the held-out facts' (chance 0.5), and the role's share of "
        "the features' variance")
  for name, p in (("this run", params), ("freshly initialised", _initialiser(exp.model)(jax.random.key(0)))):
    roles = role_probe(exp, p)
    print(f"{name:>20}: " + ", ".join(f"{k} {fit:.3f} / {held:.3f} ({share:.2%} of the variance)"
                                      for k, (fit, held, share) in roles.items()))


if __name__ == "__main__":
  main()
