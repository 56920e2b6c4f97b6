"""Hugging Face's generation constraints (n-gram blocking, bad words, minimum length, forced BOS/EOS):
the processing against transformers' own processors, and early-exit decoding with them (and with
ragged prompts) against the naive reference decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import make_generate
from deed_jax.decoding.processors import History, process
from deed_jax.decoding.reference import greedy_reference
from deed_jax.errors import UserError
from tests.conftest import random_inputs
from tests.decoding.beam_reference import beam_search
from tests.decoding.helpers import (
  assert_pools_equal,
  assert_same,
  distinct_exits,
  frequent_token,
  replace,
  spread_model,
  spread_threshold,
)
from tests.decoding.test_prompts import STEPS, _candidate_thresholds, _prompts

VOCAB, EOS = 7, 2


def _hf_processors(config: DecodeConfig, prompt_length: int):
  """transformers' processors for one row whose decoder prompt has `prompt_length` tokens, as
  `generate` builds them (max_length = prompt + max_new_tokens)."""
  transformers = pytest.importorskip("transformers")
  g = transformers.generation.logits_process
  out = []
  if config.no_repeat_ngram_size:
    out.append(g.NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
  if config.bad_words_ids:
    out.append(g.NoBadWordsLogitsProcessor([list(w) for w in config.bad_words_ids], EOS))
  if config.min_new_tokens:
    out.append(g.MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, EOS))
  if config.forced_bos_id is not None:
    out.append(g.ForcedBOSTokenLogitsProcessor(config.forced_bos_id))
  if config.forced_eos_id is not None:
    max_length = prompt_length + config.max_new_tokens
    out.append(g.ForcedEOSTokenLogitsProcessor(max_length, config.forced_eos_id))
  return g.LogitsProcessorList(out)


SETTINGS = [
  dict(no_repeat_ngram_size=2),
  dict(no_repeat_ngram_size=3),
  dict(no_repeat_ngram_size=1),
  dict(bad_words_ids=((3,), (4, 5), (5, 5, 6), (EOS,))),
  dict(min_new_tokens=3),
  dict(forced_bos_id=6),
  dict(forced_eos_id=EOS),
  dict(
    no_repeat_ngram_size=2,
    bad_words_ids=((1, 1),),
    min_new_tokens=2,
    forced_bos_id=4,
    forced_eos_id=EOS,
  ),  # fmt: skip
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_processing_equals_transformers_processors(setting):
  """Random sequences over a small vocabulary (so n-grams repeat), ragged prompts, every step: our
  batched, left-padded processing against HF's processors run on each row alone."""
  torch = pytest.importorskip("torch")
  config = DecodeConfig(max_new_tokens=6, eos_id=EOS, **setting)
  rng = np.random.default_rng(0)
  prompt_lengths = [1, 3, 5, 2]
  width = max(prompt_lengths)
  sequences = [rng.integers(0, VOCAB, n + config.max_new_tokens).tolist() for n in prompt_lengths]
  left = np.zeros((4, width + config.max_new_tokens), np.int32)  # prompts left-padded, then new
  for b, (n, seq) in enumerate(zip(prompt_lengths, sequences)):
    left[b, width - n : width] = seq[:n]
    left[b, width:] = seq[n:]
  first = jnp.asarray([width - n for n in prompt_lengths], jnp.int32)
  for new in range(config.max_new_tokens):
    log_probs = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(4, VOCAB)), jnp.float32))
    ours = np.asarray(process(log_probs, History(jnp.asarray(left), first, new), config, width))
    for b, n in enumerate(prompt_lengths):
      ids = torch.tensor([sequences[b][: n + new]])
      theirs = _hf_processors(config, n)(ids, torch.tensor(np.asarray(log_probs)[b : b + 1]))
      np.testing.assert_array_equal(ours[b], theirs.numpy()[0], err_msg=f"row {b}, step {new}")


def test_greedy_deed_with_prompts_and_constraints_equals_the_naive_reference():
  """n-gram blocking and forced BOS on, ragged prompts (one of a single token, so BOS is forced
  there), exits over >= 3 layers, backfill happening."""
  model = spread_model("text", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=0)
  prompts = _prompts(model, (3, 1, 5, 2), 0)
  decode = DecodeConfig(
    exit_mode="deed", max_new_tokens=STEPS, backfill_chunk=2, no_repeat_ngram_size=2,
    forced_bos_id=5, min_new_tokens=2,
  )  # fmt: skip
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t, prompts))
  deed = make_generate(model, decode)
  backfills = lambda t: int(np.asarray(deed(encoder_inputs, t, prompts).backfilled).sum()) > 0
  threshold = spread_threshold(
    reference, _candidate_thresholds(model, encoder_inputs, prompts), require=backfills
  )
  expected = reference(threshold)
  assert distinct_exits(expected.exit_layers) >= 3
  out = deed(encoder_inputs, threshold, prompts)
  assert_same(out, expected)
  tokens, exits = np.asarray(out.tokens), np.asarray(out.exit_layers)
  assert tokens[1, 0] == 5 and exits[1, 0] == 1  # forced: certain at the first layer
  for b, prompt in enumerate(prompts):  # no bigram twice in a row's sequence (prompt included)
    sequence = prompt + tokens[b].tolist()
    bigrams = list(zip(sequence, sequence[1:]))
    assert len(bigrams) == len(set(bigrams)), sequence
  static = replace(decode, exit_mode="static")
  assert_same(
    make_generate(model, static)(encoder_inputs, prompt=prompts),
    greedy_reference(model, encoder_inputs, static, prompt=prompts),
  )


def test_beam_with_prompts_and_constraints_equals_straightforward_beam_search():
  model = spread_model("image", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=0)
  prompts = _prompts(model, (2, 1, 4), 1)
  eos_id = frequent_token(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    strategy="beam", num_beams=3, max_new_tokens=STEPS, length_penalty=0.8, eos_id=eos_id,
    no_repeat_ngram_size=2, forced_bos_id=(eos_id + 1) % model.config.vocab_size,
  )  # fmt: skip
  resolved = decode.resolve(model.config)
  deed = make_generate(model, decode)
  oracle = make_generate(model, replace(decode, exit_mode="oracle"))
  reference = lambda t: beam_search(
    model, encoder_inputs, num_beams=3, max_new_tokens=STEPS, eos_id=eos_id, length_penalty=0.8,
    threshold=t, prompt=prompts, constraints=resolved,
  )  # fmt: skip

  def telling(threshold) -> bool:
    exits = {e for pool in reference(threshold).pools for h in pool for e in h[2]}
    return len(exits) >= 3

  threshold = spread_threshold(
    lambda t: oracle(encoder_inputs, t, prompts),
    _candidate_thresholds(model, encoder_inputs, prompts),
    require=telling,
  )
  pools, layers_run, _ = reference(threshold)
  out = deed(encoder_inputs, threshold, prompts)
  assert_pools_equal(out, pools, model.config.pad_id)
  assert np.asarray(out.layers_run).tolist() == layers_run


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(no_repeat_ngram_size=-1), r"no_repeat_ngram_size=-1 must be an int >= 0"),
    (dict(min_new_tokens=1.5), r"min_new_tokens=1.5 must be an int >= 0"),
    (dict(bad_words_ids=[[1], []]), r"bad_words_ids=.* non-empty token-id sequences"),
    (dict(bad_words_ids="ab"), r"bad_words_ids='ab'"),
    (dict(bad_words_ids=[[1, 99]]), r"bad_words_ids holds token id\(s\) \[99\] outside"),
    (dict(forced_bos_id=99), r"forced_bos_id=99 is outside the vocabulary"),
    (dict(forced_eos_id=-1), r"forced_eos_id=-1 is outside the vocabulary"),
  ],
)
def test_bad_constraint_settings_are_refused(change, message):
  model = spread_model("text", 0)
  with pytest.raises(UserError, match=message):
    DecodeConfig(**change).resolve(model.config)
