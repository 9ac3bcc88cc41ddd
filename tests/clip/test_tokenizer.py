"""CLIP's BPE tokenizer against the reference: the goldens' tokens and lengths of `CLIPModel.encode_prompts`,
truncation to ctx - 2 BPE tokens, tokenisations read off the vocabulary file itself, the cleaning ftfy would do,
and the shipped vocabulary's checksum."""

import gzip
import hashlib
import os
import re
import warnings

import numpy as np
import pytest

from glide_jax.clip import tokenizer as clip_tokenizer
from glide_jax.clip.tokenizer import CLIP_VOCAB_DIR, CLIP_VOCAB_PATH, EOT_ID, SOT_ID, ClipTokenizer, get_clip_tokenizer
from glide_jax.errors import UserError
from helpers.paths import REPO

GOLDENS = os.path.join(os.path.dirname(REPO), "shared", "reference", "clip_goldens")


@pytest.fixture(scope="module")
def tok():
  return get_clip_tokenizer()


@pytest.fixture(scope="module")
def vocab():
  """token → id read straight from the merges file, for ASCII tokens: the byte tokens come first in GPT-2's byte
  order ('!'..'~' lead it, so an ASCII character c is id ord(c) - 33), the same with "</w>" 256 later, then one
  id per merge line (512 + its index), and SOT, EOT last."""
  with gzip.open(CLIP_VOCAB_PATH, "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
  ids = {chr(c): c - 33 for c in range(33, 127)}
  ids.update({chr(c) + "</w>": 256 + c - 33 for c in range(33, 127)})
  ids.update({"".join(m.split()): 512 + i for i, m in enumerate(merges)})
  assert len(merges) == 48894 and 512 + len(merges) == SOT_ID and SOT_ID + 1 == EOT_ID
  return ids


@pytest.mark.skipif(not os.path.isdir(GOLDENS), reason="the reference goldens are not beside the checkout")
def test_encode_prompts_matches_the_goldens(tok):
  with np.load(os.path.join(GOLDENS, "clip.npz"), allow_pickle=False) as f:
    prompts, want_tokens, want_len = list(f["in/prompts"]), f["in/tokens"], f["in/text_len"]
  assert prompts == ["an oil painting of a corgi", ""]
  tokens, text_len = tok.encode_prompts(["an oil painting of a corgi", ""], 40)
  assert tokens.dtype == np.int32 and text_len.dtype == np.int32 and tokens.shape == (2, 40)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_array_equal(text_len, want_len)


def test_empty_prompt_is_sot_eot_then_zeros(tok):
  for prompt in ["", "  \n\t "]:
    tokens, text_len = tok.encode_prompts([prompt], 77)
    assert tokens[0].tolist() == [SOT_ID, EOT_ID] + [0] * 75 and text_len.tolist() == [2]


def test_truncation_keeps_the_first_ctx_minus_2_tokens_and_ends_with_eot(tok):
  prompt = " ".join(f"word{i}" for i in range(40))
  bpe = tok.encode(prompt)
  assert len(bpe) > 38
  with pytest.warns(UserWarning, match="truncated"):
    tokens, text_len = tok.encode_prompts([prompt, "a dog"], 40)
  assert tokens[0].tolist() == [SOT_ID] + bpe[:38] + [EOT_ID] and text_len.tolist() == [40, 4]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Exactly ctx - 2 tokens fit: nothing is cut, nothing is said.
    tokens, text_len = tok.encode_prompts([prompt], len(bpe) + 2)
  assert tokens[0].tolist() == [SOT_ID] + bpe + [EOT_ID] and text_len.tolist() == [len(bpe) + 2]
  with pytest.raises(ValueError, match="ctx=1"):
    tok.encode_prompts(["a"], 1)


def test_common_words_are_one_token_with_the_end_of_word_suffix(tok, vocab):
  words = ["a", "photo", "of", "dog", "an", "oil", "painting", "corgi"]
  assert tok.encode(" ".join(words)) == [vocab[w + "</w>"] for w in words]
  assert tok.encode("a photo of a dog") == [320, 1125, 539, 320, 1929]  # CLIP's well-known ids.


def test_a_rare_word_splits_into_subwords_with_the_suffix_on_the_last(tok, vocab):
  by_id = {i: t for t, i in vocab.items()}
  ids = tok.encode("glidejaxish")
  pieces = [by_id[i] for i in ids]
  assert len(pieces) > 1 and "".join(pieces) == "glidejaxish</w>"
  assert pieces[-1].endswith("</w>") and not any(p.endswith("</w>") for p in pieces[:-1])


def test_case_folding_and_whitespace_cleanup(tok):
  want = tok.encode("a photo of a dog")
  assert tok.encode("A Photo OF a DOG") == want
  assert tok.encode("  a\tphoto \n\n of\u00a0 a   dog  ") == want


def test_punctuation_digits_and_contractions_are_split(tok, vocab):
  assert tok.encode("dog!!") == [vocab["dog</w>"], vocab["!!</w>"]]
  assert tok.encode("dog, cat.") == [vocab["dog</w>"], vocab[",</w>"], vocab["cat</w>"], vocab[".</w>"]]
  assert tok.encode("2024") == [vocab[d + "</w>"] for d in "2024"]  # One token per digit.
  assert tok.encode("it's") == [vocab["it</w>"], vocab["'s</w>"]]


@pytest.mark.parametrize("typed, plain", [
    ("it\u2019s a \u201cdog\u201d", "it's a \"dog\""),  # Curly quotes straightened, so "'s" stays one token.
    ("it&#x2019;s &amp; &amp;amp; &EACUTE;", "it's & & \u00e9"),  # HTML entities, as ftfy and html.unescape do.
    ("\uff24\uff2f\uff27\u3000\uff23\uff21\uff34", "dog cat"),  # Fullwidth letters and the ideographic space.
    ("\ufb01sh \ufb02ag", "fish flag"),  # Latin ligatures.
    ("cafe\u0301", "caf\u00e9"),  # NFC.
    ("a\x00 d\x7fog\ufeff\x1b[31m!", "a dog!"),  # Invisible control characters and terminal escapes.
    ("\x93dog\x94", "\"dog\""),  # C1 controls read as Windows-1252.
])
def test_text_is_cleaned_as_ftfy_would(tok, typed, plain):
  # The pairs were checked against the reference tokenizer with ftfy 6.3.1.
  assert tok.encode(typed) == tok.encode(plain)


def test_special_token_strings_in_a_prompt_become_the_special_ids(tok, vocab):
  assert tok.encode("<|startoftext|>dog<|ENDOFTEXT|>") == [SOT_ID, vocab["dog</w>"], EOT_ID]  # As the reference.


def test_vocabulary_checksum_matches_its_readme():
  with open(os.path.join(CLIP_VOCAB_DIR, "README.md"), encoding="utf-8") as f:
    want = re.search(r"bpe_simple_vocab_16e6\.txt\.gz\s+([0-9a-f]{64})", f.read()).group(1)
  with open(CLIP_VOCAB_PATH, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == want


def test_a_missing_vocabulary_names_the_file_and_the_fix(tmp_path, monkeypatch):
  missing = str(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
  with pytest.raises(UserError, match=re.escape(missing) + ".*pass the path"):
    ClipTokenizer(missing)
  monkeypatch.setattr(clip_tokenizer, "CLIP_VOCAB_PATH", missing)  # As if the package data were not installed.
  with pytest.raises(UserError, match=re.escape(missing) + r".*reinstall glide-jax \(pip install -e \.\)"):
    clip_tokenizer._load_vocab(missing)
