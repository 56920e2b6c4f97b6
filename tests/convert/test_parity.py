"""Converted models compute what the Hugging Face PyTorch models compute: logits and generated tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deed_jax.convert.parity import hf_generate, pad_to
from deed_jax.decoding import DecodeConfig, generate
from tests.convert import hf_models

# One per family and encoder (donut's decoder is mBART's pre-norm stack).
GENERATION_VARIANTS = ("bart", "t5_v1_0", "t5_v1_1", "vit_bart", "donut")
MAX_NEW_TOKENS = hf_models.PARITY_MAX_NEW_TOKENS


@pytest.mark.parametrize("name", sorted(hf_models.BUILDERS))
def test_final_exit_logits_match_pytorch(converted, name):
  c = converted(name)
  inputs = hf_models.random_inputs(c.hf_model)
  decoder_ids = torch.randint(
    3,
    c.hf_model.config.get_text_config().vocab_size,
    (3, 6),
    generator=torch.Generator().manual_seed(1),
  )
  with torch.no_grad():
    expected = c.hf_model(**inputs, decoder_input_ids=decoder_ids).logits.numpy()  # [B, T, V]
  logits = np.asarray(c.model(hf_models.to_ours(inputs), decoder_ids.numpy()))  # [L, B, T, V]
  assert logits.shape[0] == c.model.config.decoder_layers
  assert np.ptp(expected, axis=-1).min() > 0.1  # logits that really differ across the vocabulary
  np.testing.assert_allclose(logits[-1], expected, rtol=0, atol=1e-4)
  # Every exit is a distinct prediction (the adapters are the identity, the layers are not).
  assert np.abs(logits[0] - logits[-1]).max() > 1e-2


def _hf_generate(c, inputs, prompt=None, **search) -> tuple[np.ndarray, np.ndarray | None]:
  config = c.model.config
  return hf_generate(
    c.hf_model,
    inputs,
    MAX_NEW_TOKENS,
    eos_id=config.eos_id,
    pad_id=config.pad_id,
    prompt=prompt,
    **search,
  )


@pytest.mark.parametrize("name", GENERATION_VARIANTS)
def test_greedy_matches_hf_generate(converted, name):
  c = converted(name, trained=True)  # trained until its generations on the parity batch vary
  inputs = hf_models.parity_batch(c.hf_model)
  expected, _ = _hf_generate(c, inputs, num_beams=1)
  expected = pad_to(expected, MAX_NEW_TOKENS, c.model.config.pad_id)
  out = generate(
    c.model, hf_models.to_ours(inputs), DecodeConfig(max_new_tokens=MAX_NEW_TOKENS, threshold=1.5)
  )  # DEED that never exits
  np.testing.assert_array_equal(np.asarray(out.tokens), expected)
  _check_varied(expected, c.model.config.eos_id)


@pytest.mark.parametrize("name", ["bart", "t5_v1_1", "donut"])
def test_greedy_with_ragged_prompts_matches_hf_generate(converted, name):
  """A ragged batch of decoder prompts against HF `generate(decoder_input_ids=...)` one row at a
  time. Each prompt is the start token and the first k_b tokens of the model's own greedy output, so
  the prompted decisions are the unprompted ones (checked far from ties) continued."""
  c = converted(name, trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  config = c.model.config
  plain, _ = _hf_generate(c, inputs, num_beams=1)
  # k_b of the row's own tokens, never its EOS (rows end where the model decided, chosen from it)
  ended = [row.index(config.eos_id) if config.eos_id in row else len(row) for row in plain.tolist()]
  ks = [min(k, end) for k, end in zip((1, 3, 0, 2), ended)]
  assert len(set(ks)) >= 3, (ks, plain)  # ragged
  prompts = [[config.bos_id] + plain[b, :k].tolist() for b, k in enumerate(ks)]
  expected = []
  for b, prompt in enumerate(prompts):
    row = {k: v[b : b + 1] for k, v in inputs.items()}
    tokens, _ = _hf_generate(c, row, num_beams=1, prompt=[prompt])
    expected.append(pad_to(tokens, MAX_NEW_TOKENS, config.pad_id)[0])
  out = generate(
    c.model,
    hf_models.to_ours(inputs),
    DecodeConfig(max_new_tokens=MAX_NEW_TOKENS, threshold=1.5),
    prompt=prompts,
  )
  np.testing.assert_array_equal(np.asarray(out.tokens), np.array(expected))
  for b, k in enumerate(ks):  # each row continues its prompt as unprompted decoding does
    n = MAX_NEW_TOKENS - k
    np.testing.assert_array_equal(
      np.array(expected)[b, :n], pad_to(plain, MAX_NEW_TOKENS, config.pad_id)[b, k:]
    )


def _check_varied(tokens: np.ndarray, eos_id: int) -> None:
  """The generations (padded to MAX_NEW_TOKENS) really test something: rows differ, and they end with
  EOS at different steps, some before the limit."""
  assert tokens.shape[1] == MAX_NEW_TOKENS
  assert len({tuple(row) for row in tokens.tolist()}) > 1
  is_eos = tokens == eos_id
  lengths = np.where(
    is_eos.any(1), is_eos.argmax(1) + 1, MAX_NEW_TOKENS + 1
  )  # incl. EOS; none: over
  assert lengths.min() < MAX_NEW_TOKENS and len(set(lengths.tolist())) > 1, tokens


# Every family with a brevity-favouring penalty; two of them also with a length-favouring one and
# early stopping (the pool/stopping rules themselves are covered in tests/decoding/test_beam.py).
# (Training checked that no beam decision of these searches is a near-tie: hf_models.generation_problem.)
BEAM_CASES = [(name, 0.6, False) for name in GENERATION_VARIANTS] + [
  ("bart", 2.0, True),
  ("t5_v1_1", 2.0, True),
]
assert {case[1:] for case in BEAM_CASES} <= set(hf_models.PARITY_BEAM_SEARCHES)


@pytest.mark.parametrize("name,length_penalty,early_stopping", BEAM_CASES)
def test_beam_matches_hf_generate(converted, name, length_penalty, early_stopping):
  c = converted(name, trained=True)
  inputs = hf_models.parity_batch(c.hf_model)
  beams = hf_models.PARITY_BEAMS
  expected, expected_scores = _hf_generate(
    c,
    inputs,
    num_beams=beams,
    num_return_sequences=beams,
    length_penalty=length_penalty,
    early_stopping=early_stopping,
  )
  out = generate(
    c.model,
    hf_models.to_ours(inputs),
    DecodeConfig(
      strategy="beam",
      num_beams=beams,
      max_new_tokens=MAX_NEW_TOKENS,
      threshold=1.5,
      length_penalty=length_penalty,
      early_stopping=early_stopping,
    ),
  )
  pad, batch = c.model.config.pad_id, expected.shape[0] // beams
  expected = pad_to(expected, MAX_NEW_TOKENS, pad).reshape(batch, beams, MAX_NEW_TOKENS)
  np.testing.assert_array_equal(np.asarray(out.beams.tokens), expected)
  np.testing.assert_allclose(
    np.asarray(out.beams.scores), expected_scores.reshape(batch, beams), rtol=1e-4
  )
  np.testing.assert_array_equal(np.asarray(out.tokens), expected[:, 0])
  _check_varied(expected.reshape(batch * beams, -1), c.model.config.eos_id)
