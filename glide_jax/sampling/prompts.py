"""Prompts to sample: parsed from config.sample (a comma-separated list or a UTF-8 file), or one per class."""

from __future__ import annotations

from typing import Sequence

import ml_collections

from glide_jax.errors import UserError


def split_prompts(text: str) -> list[str]:
  """The non-empty, stripped prompts of a comma-separated list."""
  return [p.strip() for p in text.split(",") if p.strip()]


def read_prompt_file(path: str) -> list[str]:
  """One prompt per non-blank line of a UTF-8 file; a UserError if it cannot be read or holds none."""
  try:
    with open(path, encoding="utf-8") as f:
      prompts = [line.strip() for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise UserError(f"The prompt file {path} (config.sample.prompt_file) is not UTF-8 text ({e.reason} at byte "
                    f"{e.start}); save it as UTF-8.") from None
  except OSError as e:
    raise UserError(f"Cannot read the prompt file {path} (config.sample.prompt_file): {e.strerror}.") from None
  if not prompts:
    raise UserError(f"The prompt file {path} (config.sample.prompt_file) has no prompts: write one prompt per line.")
  return prompts


def parse_prompts(sample_config: ml_collections.ConfigDict, class_names: Sequence[str]) -> list[str]:
  """config.sample.prompt_file's prompts, else config.sample.prompts', else one prompt per class ("zero" …)."""
  if sample_config.prompt_file:
    return read_prompt_file(sample_config.prompt_file)
  prompts = split_prompts(sample_config.prompts) or list(class_names)
  if not prompts:
    raise UserError("This config has no classes to prompt with (no dataset, or captions): give "
                    "--config.sample.prompts (comma-separated) or --config.sample.prompt_file.")
  return prompts


def class_of_prompt(prompt: str, class_names: Sequence[str]) -> int:
  """The class a prompt names exactly (its word or numeral), or −1."""
  text = prompt.strip().lower()
  for k, name in enumerate(class_names):
    if text in (name.lower(), str(k)):
      return k
  return -1
