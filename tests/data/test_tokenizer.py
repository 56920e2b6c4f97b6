from __future__ import annotations

import pytest

from deed_jax.data.tokenizer import ByteTokenizer, get_tokenizer
from deed_jax.errors import UserError


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


@pytest.mark.parametrize(
  "name, content", [("tokenizer.json", b"garbage{"), ("spiece.model", bytes(range(256)))]
)
def test_a_corrupt_tokenizer_file_is_refused_naming_it(tmp_path, name, content):
  (tmp_path / name).write_bytes(content)
  for spec in (str(tmp_path / name), str(tmp_path)):  # the file, or the directory holding it
    with pytest.raises(UserError, match=rf"{name} cannot be read .*corrupt or foreign"):
      get_tokenizer(spec)


def test_added_task_tokens_are_whole_tokens_after_the_bytes_and_skipped_by_decode(tmp_path):
  tokens = ("<s_forms>", "<s_question>", "</s_question>", "<s_answer>", "<s_q>")
  tok = ByteTokenizer(tokens)
  assert tok.vocab_size == 259 + len(tokens)
  ids = tok.encode("<s_forms><s_question>a <b></s_question><s_answer>")
  byte = lambda text: [b + 3 for b in text.encode()]
  # <s_question> is matched whole, not as <s_q> + "uestion>"
  assert ids == [259, 260] + byte("a <b>") + [261, 262]
  assert tok.decode(ids + byte("x") + [tok.eos_id]) == "a <b>x"
  assert ByteTokenizer().encode("<s_forms>") == byte("<s_forms>")  # without them: bytes
  path = tmp_path / "spiece.model"
  path.write_bytes(b"")
  with pytest.raises(UserError, match=r"added tokens \['<s_x>'\] need a tokenizer.json"):
    get_tokenizer(str(path), ("<s_x>",))
