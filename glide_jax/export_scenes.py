"""`python -m glide_jax.export_scenes --out=DIR [--split=train]`: a split of the MNIST scenes
(glide_jax/scenes.py) written as a caption folder, PNGs and captions.jsonl, for --config.data.source=folder
or any other tool."""

from __future__ import annotations

import argparse
from typing import Optional

from glide_jax.config import default_config, validate_config
from glide_jax.data import load_scenes
from glide_jax.errors import report_errors
from glide_jax.scenes import export_folder


def main(argv: Optional[list[str]] = None) -> None:
  """Parses the flags and writes the split; bad input is one `error:` paragraph (exit 2)."""
  parser = argparse.ArgumentParser(description="Write a split of the MNIST scenes as a caption folder (PNGs and "
                                   "captions.jsonl), read from the prepared MNIST ($TFDS_DATA_DIR).")
  parser.add_argument("--out", required=True, help="the folder to write (created)")
  parser.add_argument("--split", default="train", help="train, test or held_out, sliceable: 'train[:1000]'")
  defaults = default_config().data
  for name in ("count", "test_count", "seed"):
    parser.add_argument(f"--{name}", type=int, default=defaults.scenes[name])
  parser.add_argument("--held_out", type=float, default=defaults.scenes.held_out)
  parser.add_argument("--image_size", type=int, default=defaults.image_size)
  args = parser.parse_args(argv)

  def export() -> None:
    config = default_config()
    config.data.source, config.data.image_size = "mnist_scenes", args.image_size
    for name in ("count", "test_count", "seed", "held_out"):
      config.data.scenes[name] = getattr(args, name)
    validate_config(config)
    dataset = load_scenes(config.data, args.split)
    export_folder(dataset, args.out)
    print(f"Wrote {len(dataset)} scenes of the {args.split!r} split and {args.out}/captions.jsonl; train on them "
          f"with --config.data.source=folder --config.data.folder={args.out}.")

  report_errors(export)


if __name__ == "__main__":
  main()
