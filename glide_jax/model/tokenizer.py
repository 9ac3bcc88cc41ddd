"""Tokenizers that turn prompts into fixed-length token ids and a mask.

GLIDE (glide-text2im `tokenizer/bpe.py`) right-pads to the context length with its pad id and returns a
mask that is True on real tokens; the empty prompt is all padding with the mask all False. The byte
tokenizer here follows the same contract and needs no vocabulary download.
"""

from __future__ import annotations

import abc
import functools
import gzip
import os
import warnings
from typing import Optional, Sequence

import numpy as np

from glide_jax.errors import ConfigError


class Tokenizer(abc.ABC):
  """The interface the model needs: a vocabulary size, a pad id and `encode`."""

  vocab_size: int
  pad_id: int

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without padding or truncation."""

  def padded_tokens_and_mask(self, tokens: Sequence[int], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncates to `context_length`, right-pads with `pad_id`; mask is True on real tokens."""
    tokens = list(tokens)[:context_length]
    n = len(tokens)
    ids = np.full((context_length,), self.pad_id, dtype=np.int32)
    ids[:n] = tokens
    mask = np.zeros((context_length,), dtype=bool)
    mask[:n] = True
    return ids, mask

  def tokenize_batch(self, prompts: Sequence[str], context_length: int,
                     warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [N, L] int32 and mask [N, L] bool for a list of prompts.

    Prompts longer than the context are truncated, with a warning naming them.
    """
    ids = np.empty((len(prompts), context_length), dtype=np.int32)
    mask = np.empty((len(prompts), context_length), dtype=bool)
    too_long = []
    for i, prompt in enumerate(prompts):
      tokens = self.encode(prompt)
      if len(tokens) > context_length:
        too_long.append(prompt)
      ids[i], mask[i] = self.padded_tokens_and_mask(tokens, context_length)
    if too_long and warn:
      shown = ", ".join(repr(p[:40]) for p in too_long[:3])
      warnings.warn(
          f"{len(too_long)} prompt(s) longer than the text context of {context_length} tokens were truncated "
          f"({shown}); raise config.model.text_ctx to keep them whole.",
          stacklevel=2)
    return ids, mask


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids 0..255, with pad id 256 (GLIDE's pad plays the same role at 50256)."""

  vocab_size = 257
  pad_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))


class GPT2BPETokenizer(Tokenizer):
  """GLIDE's own tokenizer (GPT-2 byte-level BPE, vocabulary 50257, pad 50256) from local files.

  Reads `encoder.json` and `vocab.bpe`, gzipped or not (the package ships them gzipped, as glide-text2im
  does; nothing is downloaded). Lower-cases, splits with the GPT-2 pattern and applies the BPE merges, as
  glide-text2im's `tokenizer/bpe.py` does; no BOS/EOS.
  """

  vocab_size = 50257
  pad_id = 50256

  def __init__(self, encoder_json: str, vocab_bpe: str):
    import json

    import regex  # GPT-2's pattern needs \p{L}; `regex` is only required for this tokenizer.

    with _open_text(encoder_json) as f:
      self._encoder = json.load(f)
    with _open_text(vocab_bpe) as f:
      merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    self._ranks = {pair: i for i, pair in enumerate(merges)}
    self._byte_encoder = bytes_to_unicode()
    self._pattern = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    self._cache: dict[str, list[str]] = {}

  def _bpe(self, token: str) -> list[str]:
    if token in self._cache:
      return self._cache[token]
    word = bpe_merge(list(token), self._ranks)
    self._cache[token] = word
    return word

  def encode(self, text: str) -> list[int]:
    ids = []
    for piece in self._pattern.findall(text.lower()):
      piece = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self._encoder[t] for t in self._bpe(piece))
    return ids


def _open_text(path: str):
  return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def bpe_merge(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
  """The symbols of `word` after byte-level BPE: the adjacent pair of lowest merge rank is joined everywhere,
  until no adjacent pair has a rank (GPT-2's and CLIP's `bpe`)."""
  while len(word) > 1:
    pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
    best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
    if best not in ranks:
      break
    merged, i = [], 0
    while i < len(word):
      if i < len(word) - 1 and (word[i], word[i + 1]) == best:
        merged.append(word[i] + word[i + 1])
        i += 2
      else:
        merged.append(word[i])
        i += 1
    word = merged
  return word


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable unicode characters."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


# GPT-2's vocabulary, package data of glide_jax.model (gpt2_vocab/README.md says where it comes from).
GPT2_VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_vocab")
GPT2_VOCAB_FILES = ("encoder.json.gz", "vocab.bpe.gz")

# Tokenizer names the config accepts; the config validator reads this table.
TOKENIZER_NAMES = ("byte", "gpt2")


def unavailable_reason(name: str) -> Optional[str]:
  """Why tokenizer `name` cannot be built here (missing vocabulary files or module), or None if it can."""
  if name != "gpt2":
    return None
  missing = [f for f in GPT2_VOCAB_FILES if not os.path.isfile(os.path.join(GPT2_VOCAB_DIR, f))]
  if missing:
    return (f"GPT-2's vocabulary files ({', '.join(missing)}) are missing from {GPT2_VOCAB_DIR}; reinstall "
            f"glide-jax (pip install -e .) so its package data is in place")
  try:
    import regex  # noqa: F401
  except ImportError:
    return "the `regex` module its pre-tokenizer needs is not installed (pip install regex)"
  return None


@functools.lru_cache(maxsize=1)
def _gpt2_tokenizer() -> GPT2BPETokenizer:  # Reading the vocabulary takes a fraction of a second: once.
  return GPT2BPETokenizer(*(os.path.join(GPT2_VOCAB_DIR, f) for f in GPT2_VOCAB_FILES))


def get_tokenizer(name: str = "byte") -> Tokenizer:
  """Tokenizer by config name: "byte" (default) or "gpt2" (from the vocabulary in GPT2_VOCAB_DIR)."""
  if name not in TOKENIZER_NAMES:
    raise ConfigError(f"Unknown tokenizer {name!r}: config.model.tokenizer must be one of {TOKENIZER_NAMES}.")
  reason = unavailable_reason(name)
  if reason:
    raise ConfigError(f"config.model.tokenizer = {name!r} cannot be used: {reason}. Use 'byte'.")
  if name == "gpt2":
    return _gpt2_tokenizer()
  return ByteTokenizer()
