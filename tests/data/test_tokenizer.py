from __future__ import annotations

import pytest

from deed_jax.data.tokenizer import ByteTokenizer, get_tokenizer


def test_byte_tokenizer_round_trip_and_specials():
  tok = ByteTokenizer()
  ids = tok.encode("Zoë 12-B")
  assert min(ids) >= 3 and max(ids) < tok.vocab_size == 259
  assert tok.decode(ids) == "Zoë 12-B"
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, 70, 71]) == "Zoë 12-B"
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


def test_unknown_tokenizer_is_refused_by_name(tmp_path):
  with pytest.raises(ValueError, match="'nope'"):
    get_tokenizer("nope")
  path = tmp_path / "vocab.txt"
  path.write_text("a")
  with pytest.raises(ValueError, match="vocab.txt"):
    get_tokenizer(str(path))
