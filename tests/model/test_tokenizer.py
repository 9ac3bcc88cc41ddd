"""The byte tokenizer (GLIDE_REFERENCE.md §1 "Tokenizer" contract): ids, truncation, right padding with the
pad id, the mask, the empty prompt and the truncation warning."""

import os
import warnings

import numpy as np
import pytest

from glide_jax.errors import ConfigError
from glide_jax.model.tokenizer import ByteTokenizer, GPT2BPETokenizer, bytes_to_unicode, get_tokenizer
from helpers.paths import REPO


@pytest.fixture
def tok():
  return ByteTokenizer()


def test_byte_ids(tok):
  assert tok.vocab_size == 257 and tok.pad_id == 256
  assert tok.encode("seven") == [115, 101, 118, 101, 110]
  assert tok.encode("A 7!") == [65, 32, 55, 33]
  assert tok.encode("") == []


def test_non_ascii_is_utf8_bytes(tok):
  assert tok.encode("é") == [0xC3, 0xA9]
  assert tok.encode("日") == [0xE6, 0x97, 0xA5]
  assert tok.encode("a🙂") == [97, 0xF0, 0x9F, 0x99, 0x82]
  ids = tok.encode("ñandú 日本 🙂")
  assert bytes(ids).decode("utf-8") == "ñandú 日本 🙂"
  assert all(0 <= i < 256 for i in ids)


def test_right_padding_and_mask(tok):
  ids, mask = tok.padded_tokens_and_mask([5, 6, 7], 6)
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.tolist() == [5, 6, 7, 256, 256, 256]
  assert mask.tolist() == [True, True, True, False, False, False]


def test_truncation(tok):
  ids, mask = tok.padded_tokens_and_mask(list(range(10)), 4)
  assert ids.tolist() == [0, 1, 2, 3]
  assert mask.all()
  ids, mask = tok.padded_tokens_and_mask([1, 2, 3, 4], 4)  # Exactly full: no padding.
  assert ids.tolist() == [1, 2, 3, 4] and mask.all()


def test_empty_prompt_is_all_padding(tok):
  ids, mask = tok.tokenize_batch([""], 8)
  assert ids.tolist() == [[256] * 8]
  assert not mask.any()


def test_tokenize_batch(tok):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # No warning when everything fits.
    ids, mask = tok.tokenize_batch(["seven", "", "7", "éé"], 5)
  assert ids.shape == (4, 5) and ids.dtype == np.int32
  assert mask.shape == (4, 5) and mask.dtype == bool
  assert ids[0].tolist() == [115, 101, 118, 101, 110] and mask[0].all()
  assert ids[1].tolist() == [256] * 5 and not mask[1].any()
  assert ids[2].tolist() == [55] + [256] * 4 and mask[2].tolist() == [True] + [False] * 4
  assert ids[3].tolist() == [0xC3, 0xA9, 0xC3, 0xA9, 256] and mask[3].sum() == 4
  # The mask is True exactly where the ids are real bytes.
  assert np.array_equal(mask, ids != 256)


def test_truncation_warns_and_names_the_prompt(tok):
  with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than the text context of 4 tokens were truncated") as rec:
    ids, mask = tok.tokenize_batch(["ok", "seventeen"], 4)
  assert "'seventeen'" in str(rec[0].message)
  assert ids.tolist() == [[111, 107, 256, 256], [115, 101, 118, 101]]
  assert mask.tolist() == [[True, True, False, False], [True] * 4]


def test_truncation_inside_a_multibyte_character_keeps_bytes(tok):
  with pytest.warns(UserWarning):
    ids, mask = tok.tokenize_batch(["ééé"], 3)
  assert ids.tolist() == [[0xC3, 0xA9, 0xC3]] and mask.all()


def test_truncation_warning_can_be_turned_off(tok):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ids, _ = tok.tokenize_batch(["seventeen"], 4, warn=False)
  assert ids.tolist() == [[115, 101, 118, 101]]


def test_get_tokenizer():
  assert isinstance(get_tokenizer("byte"), ByteTokenizer)
  assert isinstance(get_tokenizer(), ByteTokenizer)
  with pytest.raises(ConfigError, match=r"config\.model\.tokenizer"):
    get_tokenizer("sentencepiece")


def test_gpt2_byte_to_unicode_map_is_a_bijection_onto_printable_characters():
  table = bytes_to_unicode()
  assert sorted(table) == list(range(256))
  assert len(set(table.values())) == 256
  assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
  assert table[ord(" ")] == "Ġ"  # GPT-2's familiar space marker.
  assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


GOLDENS = os.path.join(REPO, "..", "shared", "reference", "glide_goldens", "base.npz")


def test_gpt2_tokenizer_ships_with_the_package_and_matches_glide_text2im():
  """The reference goldens hold glide-text2im's own tokens and mask of this prompt and of the empty one."""
  tok = get_tokenizer("gpt2")
  assert isinstance(tok, GPT2BPETokenizer) and get_tokenizer("gpt2") is tok  # Read once.
  assert (tok.vocab_size, tok.pad_id) == (50257, 50256)
  ids, mask = tok.tokenize_batch(["an oil painting of a corgi", ""], 8)
  if os.path.isfile(GOLDENS):
    with np.load(GOLDENS) as golden:
      np.testing.assert_array_equal(ids, golden["in/tokens"])
      np.testing.assert_array_equal(mask, golden["in/mask"])
  assert ids.tolist() == [[272, 3056, 12036, 286, 257, 1162, 12397, 50256], [50256] * 8]
  assert mask.tolist() == [[True] * 7 + [False], [False] * 8]
  # Lower-cased as GLIDE does; numbers and punctuation are tokens of their own.
  assert tok.encode("Seven") == tok.encode("seven") == [26548]
  assert len(tok.encode("7, 3!")) == 4
