"""Tokenizers: a built-in byte-level one, and adapters for real tokenizers loaded from local files.

Every tokenizer exposes `vocab_size`, `pad_id`, `bos_id` (None when it has none, like T5's), `eos_id`,
`encode(text) -> list[int]` (the text's own tokens: decoder targets), `encode_source(text,
max_length) -> list[int]` (an encoder input, with the special tokens the model saw in pretraining:
BART's `<s> ... </s>`, T5's `... </s>`) and `decode(ids) -> str`; nothing is ever fetched from a hub.

A task may add tokens (Donut's task tokens `<s_docvqa>`, `<s_question>`, ...: `added_tokens`), as
Donut's processor adds them to its tokenizer: special tokens, appended after the vocabulary in order
(ids equal to Hugging Face's `add_special_tokens`; one the file already holds keeps its id), matched
whole in any text and skipped by `decode`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Protocol

from deed_jax.errors import UserError


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def encode_source(self, text: str, max_length: int) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: pad=0, bos=1, eos=2; vocabulary 259, then any
  `added_tokens` (259, 260, ...)."""

  pad_id, bos_id, eos_id = 0, 1, 2
  _offset = 3

  def __init__(self, added_tokens: Sequence[str] = ()):
    self.added = {
      token: 256 + self._offset + i for i, token in enumerate(dict.fromkeys(added_tokens))
    }
    self.vocab_size = 256 + self._offset + len(self.added)
    # Longest first, so a token that is a prefix of another never splits it.
    self._pattern = (
      re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)))
      if self.added
      else None
    )

  def encode(self, text: str) -> list[int]:
    if self._pattern is None:
      return self._bytes(text)
    ids, start = [], 0
    for match in self._pattern.finditer(text):
      ids += self._bytes(text[start : match.start()]) + [self.added[match.group()]]
      start = match.end()
    return ids + self._bytes(text[start:])

  def _bytes(self, text: str) -> list[int]:
    return [b + self._offset for b in text.encode("utf-8")]

  def encode_source(self, text: str, max_length: int) -> list[int]:
    """The bytes alone (models trained here see no special tokens around their sources)."""
    return self.encode(text)[:max_length]

  def decode(self, ids: Sequence[int]) -> str:
    """Stops at the first EOS; skips pad/bos."""
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if self._offset <= i < 256 + self._offset:  # added tokens are special: skipped
        out.append(i - self._offset)
    return out.decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
  """A `tokenizer.json` read with the `tokenizers` package, as `transformers` reads it: the special
  tokens named by the `tokenizer_config.json` / `special_tokens_map.json` beside it (else `<pad>`,
  `<s>`, `</s>`; BOS may be absent, as in T5), and the file's post-processor adding the special
  tokens around an encoder input."""

  def __init__(
    self,
    path: str,
    pad: str | None = None,
    bos: str | None = None,
    eos: str | None = None,
    added_tokens: Sequence[str] = (),
  ):
    from tokenizers import AddedToken  # pylint: disable=g-import-not-at-top
    from tokenizers import Tokenizer as _HfTokenizer  # pylint: disable=g-import-not-at-top

    self._tok = _HfTokenizer.from_file(path)
    if added_tokens:  # as transformers' add_special_tokens: new ones appended, known ones kept
      self._tok.add_special_tokens([AddedToken(t, special=True) for t in added_tokens])
    self.vocab_size = self._tok.get_vocab_size()
    named = _special_tokens(os.path.dirname(path))
    tokens = {
      "pad": pad or named.get("pad_token", "<pad>"),
      "bos": bos or named.get("bos_token", "<s>"),
      "eos": eos or named.get("eos_token", "</s>"),
    }
    ids = {name: self._tok.token_to_id(token) for name, token in tokens.items()}
    missing = [f"{name} ({tokens[name]!r})" for name in ("pad", "eos") if ids[name] is None]
    if missing:
      raise UserError(f"{path} has no token for {missing}; pass the special tokens explicitly.")
    self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
    processor = self._tok.post_processor
    self._source_specials = 0 if processor is None else processor.num_special_tokens_to_add(False)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_source(self, text: str, max_length: int) -> list[int]:
    """The text truncated so that it fits `max_length` with its special tokens, then the
    post-processor's special tokens added (as transformers does with truncation=True)."""
    encoding = self._tok.encode(text, add_special_tokens=False)
    encoding.truncate(max(max_length - self._source_specials, 0))
    return self._tok.post_process(encoding).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self._tok.decode(ids, skip_special_tokens=True)


def _special_tokens(directory: str) -> dict[str, str]:
  """{"pad_token": "<pad>", ...} as transformers' tokenizer files beside a tokenizer.json name them
  (tokenizer_config.json, then special_tokens_map.json); {} when there are none."""
  out = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path) as f:
        values = json.load(f)
      for key in ("pad_token", "bos_token", "eos_token"):
        value = values.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
          out[key] = value
  return out


class SentencePieceTokenizer:
  """A sentencepiece `.model` file (T5, mBART)."""

  def __init__(self, path: str):
    import sentencepiece  # Optional dependency.

    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_source(self, text: str, max_length: int) -> list[int]:
    """The pieces and EOS, as transformers' sentencepiece tokenizers (T5's) end a source."""
    return self.encode(text)[: max(max_length - 1, 0)] + [self.eos_id]

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self._sp.decode(ids)


# A checkpoint directory's own tokenizer files (HF names), in order of preference.
_DIRECTORY_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model")


def get_tokenizer(spec: str, added_tokens: Sequence[str] = ()) -> Tokenizer:
  """ "byte", a path to a `tokenizer.json` or a sentencepiece `.model`, or a directory holding one
  (a Hugging Face model directory, or a workdir converted from one); with the task's
  `added_tokens` (byte and tokenizer.json tokenizers)."""
  if spec == "byte":
    return ByteTokenizer(added_tokens)
  if os.path.isdir(spec):
    found = [name for name in _DIRECTORY_FILES if os.path.isfile(os.path.join(spec, name))]
    if not found:
      raise UserError(f"Directory {spec!r} holds none of the tokenizer files {_DIRECTORY_FILES}.")
    spec = os.path.join(spec, found[0])
  if not os.path.exists(spec):
    raise UserError(f"Tokenizer {spec!r} is neither 'byte' nor an existing file or directory.")
  kinds = {".json": HuggingFaceTokenizer, ".model": SentencePieceTokenizer}
  kind = next((k for suffix, k in kinds.items() if spec.endswith(suffix)), None)
  if kind is None:
    raise UserError(
      f"Tokenizer file {spec!r}: expected a tokenizer.json or a sentencepiece .model."
    )
  if added_tokens and kind is not HuggingFaceTokenizer:
    raise UserError(
      f"Tokenizer {spec}: added tokens {list(added_tokens)} need a tokenizer.json or 'byte' "
      "(a sentencepiece model cannot take them)."
    )
  try:
    return kind(spec, added_tokens=added_tokens) if added_tokens else kind(spec)
  except UserError:
    raise
  except Exception as e:  # the tokenizers and sentencepiece libraries raise plain Exceptions
    raise UserError(
      f"Tokenizer file {spec} cannot be read ({e}): a corrupt or foreign file."
    ) from None
