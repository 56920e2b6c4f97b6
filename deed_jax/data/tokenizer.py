"""Tokenizers: a built-in byte-level one, and adapters for real tokenizers loaded from local files.

Every tokenizer exposes `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `encode(text) -> list[int]` and
`decode(ids) -> str`; nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: pad=0, bos=1, eos=2; vocabulary 259."""

  pad_id, bos_id, eos_id = 0, 1, 2
  _offset = 3
  vocab_size = 256 + _offset

  def encode(self, text: str) -> list[int]:
    return [b + self._offset for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    """Stops at the first EOS; skips pad/bos."""
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i >= self._offset:
        out.append(i - self._offset)
    return out.decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
  """A `tokenizer.json` read with the `tokenizers` package (installed with the convert extra)."""

  def __init__(self, path: str, pad: str = "<pad>", bos: str = "<s>", eos: str = "</s>"):
    from tokenizers import Tokenizer as _HfTokenizer  # Optional dependency.
    self._tok = _HfTokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size()
    ids = {name: self._tok.token_to_id(token) for name, token in (("pad", pad), ("bos", bos), ("eos", eos))}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{path} has no token for {missing}; pass the special tokens explicitly.")
    self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._tok.decode(ids, skip_special_tokens=True)


class SentencePieceTokenizer:
  """A sentencepiece `.model` file (T5, mBART)."""

  def __init__(self, path: str):
    import sentencepiece  # Optional dependency.
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._sp.decode(ids)


# A checkpoint directory's own tokenizer files (HF names), in order of preference.
_DIRECTORY_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model")


def get_tokenizer(spec: str) -> Tokenizer:
  """"byte", a path to a `tokenizer.json` or a sentencepiece `.model`, or a directory holding one
  (a Hugging Face model directory, or a workdir converted from one)."""
  if spec == "byte":
    return ByteTokenizer()
  if os.path.isdir(spec):
    found = [name for name in _DIRECTORY_FILES if os.path.isfile(os.path.join(spec, name))]
    if not found:
      raise ValueError(f"Directory {spec!r} holds none of the tokenizer files {_DIRECTORY_FILES}.")
    spec = os.path.join(spec, found[0])
  if not os.path.exists(spec):
    raise ValueError(f"Tokenizer {spec!r} is neither 'byte' nor an existing file or directory.")
  if spec.endswith(".json"):
    return HuggingFaceTokenizer(spec)
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  raise ValueError(f"Tokenizer file {spec!r}: expected a tokenizer.json or a sentencepiece .model.")
