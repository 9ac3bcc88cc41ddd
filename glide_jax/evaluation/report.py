"""The evaluation report: strict-JSON values, the printed table and the plot against the guidance scale."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from glide_jax.errors import ConfigError


def json_safe(value):
  """nan/inf → None (strict JSON), numpy scalars → Python numbers."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def sampling_settings(sample_config, num_steps: int, forward_passes: int) -> dict:
  """config.sample's settings that decide what a report's samples are, and their cost (the sampler's
  steps and forward passes per sample)."""
  s = sample_config
  settings = {"sampler": s.sampler, "respacing": s.respacing, "sampling_steps": num_steps,
              "ddim_eta": float(s.ddim_eta), "guidance": s.guidance, "guidance_interval": list(s.guidance_interval),
              "forward_passes_per_sample": forward_passes, "use_ema": bool(s.use_ema)}
  if s.guidance == "adaptive_projected":
    settings.update(apg_eta=float(s.apg_eta), apg_norm_threshold=float(s.apg_norm_threshold))
  if s.guidance == "autoguidance":
    settings.update(guide_workdir=s.guide_workdir, guide_step=int(s.guide_step))
  if s.guidance == "clip":  # Each step also differentiates the CLIP once (not counted as a forward pass).
    settings.update(clip_workdir=s.clip_workdir)
  return settings


def format_table(report: dict) -> str:
  """The per-scale results and the real-data references as a fixed-width table."""
  lines = [f"{'guidance':>8}  {'accuracy':>8}  {'worst digit':>16}  {'FID':>9}  {'diversity':>9}  {'seconds':>8}"]
  fmt = lambda x, spec: "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
  for r in report["results"]:
    lines.append(f"{r['guidance_scale']:>8g}  {fmt(r['accuracy'], '8.3f')}  "
                 f"{worst_class(r['per_digit_accuracy'], report['class_names']):>16}  {fmt(r['fid'], '9.3f')}  "
                 f"{fmt(r['diversity'], '9.3f')}  {r['seconds']:>8.1f}")
  real = report["real"]
  lines.append(f"{'real':>8}  {fmt(real['accuracy'], '8.3f')}  {'':>16}  {fmt(real['fid'], '9.3f')}  "
               f"{fmt(real['diversity'], '9.3f')}  {'':>8}   ({real['num_samples']} training images, same size)")
  floor = report["floor"]
  lines.append(f"{'floor':>8}  {'':>8}  {'':>16}  {fmt(floor['fid'], '9.3f')}  {'':>9}  {'':>8}   "
               f"({floor['num_train']} training vs {floor['num_test']} test images)")
  return "\n".join(lines)


def worst_class(per_class_accuracy: list, class_names: list[str]) -> str:
  """'0.940 nine': the lowest per-class accuracy and its class (classes without samples are skipped)."""
  scored = [(a, name) for a, name in zip(per_class_accuracy, class_names) if a is not None and math.isfinite(a)]
  if not scored:
    return "-"
  accuracy, name = min(scored, key=lambda pair: pair[0])
  return f"{accuracy:.3f} {name}"[:16]


def plot(report: dict, path: str) -> None:
  """Accuracy, FID and diversity against the guidance scale, with the real-data references dashed."""
  from matplotlib.figure import Figure  # Not pyplot: a notebook's plotting backend stays the user's.

  scales = [r["guidance_scale"] for r in report["results"]]
  nan = lambda x: math.nan if x is None else x
  panels = (("accuracy", "prompt accuracy", report["real"]["accuracy"], "real images"),
            ("fid", "classifier FID (lower is better)", report["real"]["fid"], "real images, same size"),
            ("diversity", "diversity (1 = real data)", 1.0, "test split"))
  fig = Figure(figsize=(13, 3.8))
  axes = fig.subplots(1, 3)
  for ax, (key, title, ref, ref_label) in zip(axes, panels):
    ax.plot(scales, [nan(r[key]) for r in report["results"]], "o-", label="samples")
    ax.axhline(nan(ref), color="gray", linestyle="--", label=ref_label)
    if key == "fid":
      ax.axhline(nan(report["floor"]["fid"]), color="gray", linestyle=":",
                 label=f"floor ({report['floor']['num_train']} vs {report['floor']['num_test']})")
    if key == "accuracy":
      ax.axhline(1.0 / len(report["class_names"]), color="gray", linestyle=":", label="chance")
      ax.set_ylim(0, 1.02)
    else:
      ax.set_ylim(bottom=0)
    _finish_axis(ax, title)
  c = report["config"]
  _save_figure(fig, path, f"step {report['step']}: {c['samples_per_digit']} samples per class, {c['sampler']} "
                          f"{c['sampling_steps']} steps (respacing {c['respacing'] or 'none'!r})")


def _finish_axis(ax, title: str) -> None:
  ax.set_xlabel("guidance scale")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def _save_figure(fig, path: str, title: str) -> None:
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def output_dir(eval_config, workdir: str) -> str:
  """Where --mode=eval writes: config.eval.output_dir, relative to workdir, or workdir/eval by default. A
  second directory keeps one evaluation (another sampler, sample count or scale) from overwriting another."""
  path = os.path.join(workdir, os.path.expanduser(eval_config.output_dir or "eval"))
  if os.path.isfile(path):
    raise ConfigError(f"config.eval.output_dir = {eval_config.output_dir!r} is invalid: {path} is a file; give a "
                      f"directory (it need not exist yet).")
  return path


def save_report(report: dict, out_dir: str, stem: str, plot_fn, table: str) -> None:
  """Writes out_dir/<stem>.json and <stem>.png (drawn by plot_fn), and prints the table and the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "png")]
  with open(paths[0], "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  plot_fn(report, paths[1])
  print(table, flush=True)
  print(f"Wrote {paths[0]} and {paths[1]}.", flush=True)


def format_edit_table(report: dict) -> str:
  """The edit evaluation's rows (method, scale) as a fixed-width table, with the nearest-neighbour baseline's
  and the originals' scores, then the edit accuracy per prompted class of every row."""
  lines = [f"{'method':>20}  {'guidance':>8}  {'edit acc.':>9}  {'kept class':>10}  {'known err.':>10}  {'FID':>8}"]
  rows = [*report["results"], report["baseline"]]
  for r in rows:
    fid = "-" if r["fid"] is None else f"{r['fid']:8.3f}"
    scale = "" if r.get("guidance_scale") is None else format(r["guidance_scale"], "g")
    lines.append(f"{r['method']:>20}  {scale:>8}  {r['edit_accuracy']:>9.3f}  {r['kept_class']:>10.3f}"
                 f"  {r['known_region_error']:>10d}  {fid:>8}")
  o = report["originals"]
  lines.append(f"{'originals':>20}  {'':>8}  {'':>9}  {o['accuracy']:>10.3f}  {0:>10d}  {o['fid']:>8.3f}")
  names = report["class_names"]
  lines += ["", "edit accuracy per prompted class (edits per class: "
            f"{', '.join(str(c) for c in report['baseline']['per_target_count'])})",
            f"{'method':>20}  {'guidance':>8}  " + "  ".join(f"{name[:6]:>6}" for name in names)]
  fmt = lambda x: "     -" if x is None else f"{x:6.3f}"  # noqa: E731
  for r in rows:
    scale = "" if r.get("guidance_scale") is None else format(r["guidance_scale"], "g")
    lines.append(f"{r['method']:>20}  {scale:>8}  " + "  ".join(fmt(x) for x in r["per_target_accuracy"]))
  return "\n".join(lines)


def plot_edits(report: dict, path: str) -> None:
  """Edit accuracy and FID against the guidance scale, one line per method."""
  from matplotlib.figure import Figure

  nan = lambda x: math.nan if x is None else x
  fig = Figure(figsize=(10, 3.8))
  axes = fig.subplots(1, 2)
  methods = list(dict.fromkeys(r["method"] for r in report["results"]))
  for ax, (key, title) in zip(axes, (("edit_accuracy", "edit accuracy (prompted class read)"),
                                     ("fid", "classifier FID of the edits (lower is better)"))):
    for method in methods:
      rows = [r for r in report["results"] if r["method"] == method]
      ax.plot([r["guidance_scale"] for r in rows], [nan(r[key]) for r in rows], "o-", label=method)
    ax.axhline(nan(report["baseline"][key]), color="tab:green", linestyle=":", label="nearest neighbour")
    if key == "fid":
      ax.axhline(nan(report["originals"]["fid"]), color="gray", linestyle="--", label="unedited originals")
    else:
      ax.set_ylim(0, 1.02)
    _finish_axis(ax, title)
  c = report["config"]
  _save_figure(fig, path, f"{c['num_images']} test images, mask {c['mask']!r} regenerated as "
                          f"{c['target']}; {c['sampler']} (respacing {c['respacing'] or 'none'!r})")
