"""The evaluation report: strict-JSON values, the printed table and the plot against the guidance scale."""

from __future__ import annotations

import math

import numpy as np


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


def format_table(report: dict) -> str:
  """The per-scale results and the real-data references as a fixed-width table."""
  lines = [f"{'guidance':>8}  {'accuracy':>8}  {'FID':>9}  {'diversity':>9}  {'seconds':>8}"]
  fmt = lambda x, spec: "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
  for r in report["results"]:
    lines.append(f"{r['guidance_scale']:>8g}  {fmt(r['accuracy'], '8.3f')}  {fmt(r['fid'], '9.3f')}  "
                 f"{fmt(r['diversity'], '9.3f')}  {r['seconds']:>8.1f}")
  real = report["real"]
  lines.append(f"{'real':>8}  {fmt(real['accuracy'], '8.3f')}  {fmt(real['fid'], '9.3f')}  "
               f"{fmt(real['diversity'], '9.3f')}  {'':>8}   ({real['num_samples']} training images, same size)")
  floor = report["floor"]
  lines.append(f"{'floor':>8}  {'':>8}  {fmt(floor['fid'], '9.3f')}  {'':>9}  {'':>8}   "
               f"({floor['num_train']} training vs {floor['num_test']} test images)")
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """Accuracy, FID and diversity against the guidance scale, with the real-data references dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  scales = [r["guidance_scale"] for r in report["results"]]
  nan = lambda x: math.nan if x is None else x
  panels = (("accuracy", "prompt accuracy", report["real"]["accuracy"], "real images"),
            ("fid", "classifier FID (lower is better)", report["real"]["fid"], "real images, same size"),
            ("diversity", "diversity (1 = real data)", 1.0, "test split"))
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
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
    ax.set_xlabel("guidance scale")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  c = report["config"]
  fig.suptitle(f"step {report['step']}: {c['samples_per_digit']} samples per class, {c['sampler']} "
               f"{c['sampling_steps']} steps (respacing {c['respacing'] or 'none'!r})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
