"""Prompts to sample: a comma-separated list, a UTF-8 file, or one per class; the class a prompt names."""

import pytest

from configs import tiny
from glide_jax.errors import UserError
from glide_jax.sampling.prompts import class_of_prompt, parse_prompts, split_prompts

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_split_prompts():
  assert split_prompts(" 7 , seven,,3 ") == ["7", "seven", "3"]
  assert split_prompts(" , ") == []


def test_class_of_prompt():
  assert class_of_prompt("7", CLASS_NAMES) == 7
  assert class_of_prompt(" Seven ", CLASS_NAMES) == 7
  assert class_of_prompt("zero", CLASS_NAMES) == 0
  assert class_of_prompt("a cat", CLASS_NAMES) == -1
  assert class_of_prompt("77", CLASS_NAMES) == -1
  assert class_of_prompt("", CLASS_NAMES) == -1


def test_parse_prompts(tmp_path):
  config = tiny.get_config()
  assert parse_prompts(config.sample, CLASS_NAMES) == list(CLASS_NAMES)  # Default: one prompt per class.
  config.sample.prompts = " 7 , seven,,3 "
  assert parse_prompts(config.sample, CLASS_NAMES) == ["7", "seven", "3"]
  path = tmp_path / "prompts.txt"
  path.write_text("a seven\n\n  three  \nnumber 1\n", encoding="utf-8")
  config.sample.prompt_file = str(path)
  assert parse_prompts(config.sample, CLASS_NAMES) == ["a seven", "three", "number 1"]  # The file wins.


def test_parse_prompts_errors(tmp_path):
  config = tiny.get_config()
  path = tmp_path / "bad.txt"
  path.write_bytes(b"\xff\xfe\x00bad")
  config.sample.prompt_file = str(path)
  with pytest.raises(UserError, match="is not UTF-8") as info:
    parse_prompts(config.sample, CLASS_NAMES)
  assert str(path) in str(info.value)
  path.write_text(" \n\n", encoding="utf-8")
  with pytest.raises(UserError, match="has no prompts"):
    parse_prompts(config.sample, CLASS_NAMES)
  config.sample.prompt_file = str(tmp_path / "missing.txt")
  with pytest.raises(UserError, match="Cannot read the prompt file"):
    parse_prompts(config.sample, CLASS_NAMES)
