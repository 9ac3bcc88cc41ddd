"""CLIP's byte-level BPE tokenizer, for the text encoder of GLIDE's noised CLIP.

glide-text2im's `tokenizer/simple_tokenizer.py` (CLIP's `simple_tokenizer.py`) cleans a prompt, lower-cases it,
splits it with CLIP's pattern and applies the BPE merges of `bpe_simple_vocab_16e6.txt.gz` (package data here,
clip_vocab/README.md says where it comes from); `CLIPModel.encode_prompts` (`clip/model_creation.py`) then builds
[SOT] + bpe[:ctx-2] + [EOT], zero-padded to the context, with text_len counting SOT and EOT.

The reference cleans with ftfy, which is not a dependency here: `fix_text_without_mojibake_repair` does what
ftfy's default `fix_text` does to text that is not mojibake (see its docstring for the difference).
"""

from __future__ import annotations

import functools
import gzip
import html
import html.entities
import os
import re
import unicodedata
import warnings
from typing import Optional, Sequence

import numpy as np

from glide_jax.errors import UserError
from glide_jax.model.tokenizer import bpe_merge, bytes_to_unicode  # CLIP uses GPT-2's byte → unicode map unchanged.

# CLIP's vocabulary: 256 byte tokens, the same 256 with the end-of-word suffix, 48,894 merges, then SOT and EOT.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2
SOT_ID = 49406  # <|startoftext|>
EOT_ID = 49407  # <|endoftext|>
PAD_ID = 0  # What the reference pads with (the token "!"); the text encoder reads at text_len - 1 and is causal.
END_OF_WORD = "</w>"
_SPECIALS = {"<|startoftext|>": SOT_ID, "<|endoftext|>": EOT_ID}

# CLIP's vocabulary, package data of glide_jax.clip.
CLIP_VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_vocab")
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_PATH = os.path.join(CLIP_VOCAB_DIR, CLIP_VOCAB_FILE)


@functools.lru_cache(maxsize=2)
def _load_vocab(path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
  """(token → id, merge pair → rank) from the gzipped merges file, built as the reference builds them."""
  if not os.path.isfile(path):
    fix = ("reinstall glide-jax (pip install -e .) so its package data is in place" if path == CLIP_VOCAB_PATH
           else f"pass the path of CLIP's {CLIP_VOCAB_FILE}")
    raise UserError(f"CLIP's BPE vocabulary {path} is missing; {fix}.")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]  # Line 0 is a version header.
  if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
    raise UserError(f"{path} is not CLIP's BPE vocabulary (it needs {N_MERGES} merges after a header line); "
                    f"restore {CLIP_VOCAB_FILE} from glide-text2im or CLIP.")
  byte_tokens = list(bytes_to_unicode().values())
  tokens = byte_tokens + [t + END_OF_WORD for t in byte_tokens] + ["".join(m) for m in merges] + list(_SPECIALS)
  return {t: i for i, t in enumerate(tokens)}, {m: i for i, m in enumerate(merges)}


# ftfy's default fixes short of mojibake repair, written from its documented behaviour (ftfy 6.3).
_HTML_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1_CONTROL = re.compile("[\x80-\x9f]")
_TERMINAL_ESCAPE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LIGATURES = str.maketrans({"Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž",
                            "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff",
                            "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"})
_QUOTES = str.maketrans({**dict.fromkeys("\u02bc\u2018\u2019\u201a\u201b", "'"),
                         **dict.fromkeys("\u201c\u201d\u201e\u201f", '"')})
_LINE_BREAKS = str.maketrans({"\r": "\n", "\u2028": "\n", "\u2029": "\n", "\u0085": "\n"})
# Control characters with no visible effect (tab, newline, form feed and CR stay; C1 controls are handled above).
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                           *range(0xFFF9, 0xFFFD)])


@functools.lru_cache(maxsize=1)
def _width_map() -> dict[int, str]:
  """Fullwidth ASCII and halfwidth katakana/hangul to their usual forms; the ideographic space to a space."""
  table = {0x3000: " "}
  for code in range(0xFF01, 0xFFF0):
    normal = unicodedata.normalize("NFKC", chr(code))
    if normal != chr(code):
      table[code] = normal
  return table


@functools.lru_cache(maxsize=1)
def _html_entities() -> dict[str, str]:
  """HTML5's named references that end in ';', plus the all-caps spelling of lower-case ones that HTML lacks."""
  table = {}
  for name, char in html.entities.html5.items():
    if name.endswith(";"):
      table["&" + name] = char
      upper = "&" + name.upper()
      if name == name.lower() and html.unescape(upper) == upper:
        table[upper] = char.upper()
  return table


def _unescape_entity(match: re.Match) -> str:
  entity = match.group(0)
  if entity in _html_entities():
    return _html_entities()[entity]
  if entity.startswith("&#"):
    char = html.unescape(entity)
    return entity if ";" in char else char  # Only a reference that is decoded whole, semicolon included.
  return entity


def _c1_as_windows_1252(match: re.Match) -> str:
  try:
    return match.group(0).encode("latin-1").decode("cp1252")
  except UnicodeDecodeError:  # The five bytes cp1252 leaves undefined stay what they are.
    return match.group(0)


def _fix_segment(text: str, unescape: bool) -> str:
  while True:
    before = text
    if unescape:
      text = _HTML_ENTITY.sub(_unescape_entity, text)
    text = _C1_CONTROL.sub(_c1_as_windows_1252, text)
    text = text.translate(_LIGATURES).translate(_width_map()).translate(_QUOTES)
    text = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    if _SURROGATE.search(text):  # Lone surrogates could not be UTF-8 encoded for the byte-level BPE.
      pair = lambda m: chr(0x10000 + (ord(m.group(0)[0]) - 0xD800) * 0x400 + ord(m.group(0)[1]) - 0xDC00)
      text = _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(pair, text))
    text = _TERMINAL_ESCAPE.sub("", text).translate(_CONTROLS)
    text = unicodedata.normalize("NFC", text)
    if text == before:
      return text


def fix_text_without_mojibake_repair(text: str) -> str:
  """ftfy's default `fix_text`, less its mojibake repair (`fix_encoding`), which only changes text it judges to be
  mis-decoded UTF-8 (e.g. "cafÃ©" → "café").

  Line by line (ftfy's segments): HTML entities that end in ';' are decoded until no '<' has been seen (ftfy takes
  one for real HTML), then C1 controls are read as Windows-1252, Latin ligatures split, fullwidth characters
  narrowed, curly quotes straightened, line breaks unified, surrogate pairs joined, terminal escapes and invisible
  control characters removed, and the result NFC-normalised; repeated until nothing changes.
  """
  out, unescape = [], True
  for segment in re.findall(r"[^\n]*\n|[^\n]+", text):
    unescape = unescape and "<" not in segment  # Like ftfy, once a line has '<' later lines are not unescaped.
    out.append(_fix_segment(segment, unescape))
  return "".join(out)


class ClipTokenizer:
  """CLIP's BPE tokenizer (49,408 ids; SOT 49406, EOT 49407), from a local vocabulary file (the package's by
  default; nothing is downloaded)."""

  vocab_size = VOCAB_SIZE
  sot_id = SOT_ID
  eot_id = EOT_ID
  pad_id = PAD_ID

  def __init__(self, bpe_path: Optional[str] = None):
    import regex  # CLIP's pattern needs \p{L} and \p{N}; `regex` is a dependency (as for GPT-2's tokenizer).

    self._encoder, self._ranks = _load_vocab(bpe_path or CLIP_VOCAB_PATH)
    self._byte_encoder = bytes_to_unicode()
    # The reference's pattern and flags. Its input is lower-cased, but IGNORECASE still lets "'ſ" match "'s".
    self._pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE)
    self._whitespace = regex.compile(r"\s+")  # `regex`'s \s, as the reference's whitespace_clean uses.
    self._cache: dict[str, list[str]] = {}

  def _bpe(self, token: str) -> list[str]:
    """The merges applied lowest rank first; the last symbol carries the end-of-word suffix."""
    if token in self._cache:
      return self._cache[token]
    word = bpe_merge(list(token[:-1]) + [token[-1] + END_OF_WORD], self._ranks)
    self._cache[token] = word
    return word

  def clean(self, text: str) -> str:
    """The reference's basic_clean, whitespace_clean and lower-casing, in its order."""
    text = html.unescape(html.unescape(fix_text_without_mojibake_repair(text))).strip()
    return self._whitespace.sub(" ", text).strip().lower()

  def encode(self, text: str) -> list[int]:
    """BPE ids of `text`, without SOT, EOT, padding or truncation."""
    ids = []
    for piece in self._pattern.findall(self.clean(text)):
      if piece in _SPECIALS:  # The reference turns these strings in a prompt into the special ids too.
        ids.append(_SPECIALS[piece])
        continue
      piece = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self._encoder[t] for t in self._bpe(piece))
    return ids

  def encode_prompts(self, prompts: Sequence[str], ctx: int, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """tokens int32 [B, ctx] and text_len int32 [B], as `CLIPModel.encode_prompts`: [SOT] + bpe[:ctx-2] + [EOT],
    then zeros; text_len counts SOT and EOT. Longer prompts are truncated, with a warning naming them."""
    if ctx < 2:
      raise ValueError(f"CLIP's text context must hold SOT and EOT, got ctx={ctx}.")
    tokens = np.full((len(prompts), ctx), PAD_ID, dtype=np.int32)
    text_len = np.empty((len(prompts),), dtype=np.int32)
    too_long = []
    for i, prompt in enumerate(prompts):
      ids = self.encode(prompt)
      if len(ids) > ctx - 2:
        too_long.append(prompt)
      ids = [SOT_ID] + ids[:ctx - 2] + [EOT_ID]
      tokens[i, :len(ids)] = ids
      text_len[i] = len(ids)
    if too_long and warn:
      shown = ", ".join(repr(p[:40]) for p in too_long[:3])
      warnings.warn(f"{len(too_long)} prompt(s) longer than CLIP's text context of {ctx} tokens (SOT and EOT "
                    f"included) were truncated for CLIP: {shown}.", stacklevel=2)
    return tokens, text_len


@functools.lru_cache(maxsize=1)
def get_clip_tokenizer() -> ClipTokenizer:
  """The tokenizer on the package's vocabulary, built once (reading the merges takes a fraction of a second)."""
  return ClipTokenizer()
