"""Decoder prompts: rows with prompts of different lengths decode together, in every exit mode, greedy
and beam, and equal the naive reference decoders, which lay each prompt out plainly (no padding)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.decoding.confidence import exit_confidences, exit_signals
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import generate, make_generate
from deed_jax.decoding.reference import greedy_reference
from deed_jax.errors import UserError
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config
from tests.decoding.beam_reference import beam_search
from tests.decoding.helpers import (
  assert_pools_equal,
  assert_same,
  count_compilations,
  distinct_exits,
  frequent_token,
  replace,
  spread_model,
  spread_threshold,
)

STEPS = 6  # with prompts of up to 5 tokens: 10 positions, the spread models' max_target_length


def _prompts(model, lengths, seed):
  """Ragged prompts: the start token, then random ids (any id, EOS included, may appear in one)."""
  rng = np.random.default_rng(seed)
  cfg = model.config
  return [[cfg.bos_id] + rng.integers(0, cfg.vocab_size, n - 1).tolist() for n in lengths]


def _candidate_thresholds(model, encoder_inputs, prompts, count=19):
  """Quantiles of every exit's max_prob confidence along the full model's prompted greedy output
  (its decoder input teacher-forced: each prompt, then the new tokens but the last)."""
  static = greedy_reference(
    model, encoder_inputs, DecodeConfig(exit_mode="static", max_new_tokens=STEPS), prompt=prompts
  )
  tokens = np.asarray(static.tokens)
  width = max(map(len, prompts)) + STEPS - 1
  prefix = np.full((len(prompts), width), model.config.pad_id, np.int32)
  for b, prompt in enumerate(prompts):
    prefix[b, : len(prompt) + STEPS - 1] = prompt + tokens[b, :-1].tolist()
  features, states = model.exit_features(encoder_inputs, prefix, return_states=True)
  confidences = np.asarray(exit_confidences("max_prob", exit_signals(model, features, states)))
  along = [confidences[:, b, len(p) - 1 : len(p) - 1 + STEPS] for b, p in enumerate(prompts)]
  return np.quantile(np.stack(along), np.linspace(0.05, 0.95, count))


def _row(encoder_inputs, b):
  return {k: v[b : b + 1] for k, v in encoder_inputs.items()}


@pytest.mark.parametrize(
  "encoder, seed, chunk",
  [("image", 0, 3), pytest.param("text", 0, 2, marks=pytest.mark.slow)],  # (text: test_constraints)
)
def test_deed_with_ragged_prompts_equals_the_naive_reference(encoder, seed, chunk):
  model = spread_model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=seed)
  prompts = _prompts(model, (3, 1, 5, 2), seed)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=STEPS, backfill_chunk=chunk)
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t, prompts))
  deed = make_generate(model, decode)
  backfills = lambda t: int(np.asarray(deed(encoder_inputs, t, prompts).backfilled).sum()) > 0
  threshold = spread_threshold(
    reference, _candidate_thresholds(model, encoder_inputs, prompts), require=backfills
  )
  expected = reference(threshold)
  assert distinct_exits(expected.exit_layers) >= 3  # Exits really happen at many layers.
  out = deed(encoder_inputs, threshold, prompts)
  assert_same(out, expected)
  assert np.asarray(out.backfilled).sum() > 0  # Skipped layers were computed later, exactly.
  oracle = replace(decode, exit_mode="oracle", threshold=threshold)
  assert_same(generate(model, encoder_inputs, oracle, prompts), expected)
  for b in range(4):  # Alone, with its prompt unpadded, each row decodes the same.
    alone = deed(_row(encoder_inputs, b), threshold, [prompts[b]])
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(expected.tokens)[b])
    np.testing.assert_array_equal(
      np.asarray(alone.exit_layers)[0], np.asarray(expected.exit_layers)[b]
    )
  for config in (replace(decode, exit_mode="static"), replace(decode, exit_mode="fixed",
                                                              fixed_exit_layer=2)):  # fmt: skip
    expected = greedy_reference(model, encoder_inputs, config, prompt=prompts)
    assert_same(generate(model, encoder_inputs, config, prompts), expected)


def test_copy_with_ragged_prompts_equals_its_naive_reference():
  model = spread_model("text", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=2)
  prompts = _prompts(model, (4, 2, 1), 2)
  decode = DecodeConfig(exit_mode="copy", max_new_tokens=STEPS)
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t, prompts))
  threshold = spread_threshold(reference, _candidate_thresholds(model, encoder_inputs, prompts))
  expected = reference(threshold)
  assert distinct_exits(expected.exit_layers) >= 3
  assert_same(
    generate(model, encoder_inputs, replace(decode, threshold=threshold), prompts), expected
  )


def test_beam_with_ragged_prompts_equals_straightforward_beam_search():
  model = spread_model("image", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=0)
  prompts = _prompts(model, (2, 5, 1), 0)
  eos_id = frequent_token(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    strategy="beam", num_beams=3, max_new_tokens=STEPS, length_penalty=0.8, eos_id=eos_id
  )
  deed = make_generate(model, decode)
  oracle = make_generate(model, replace(decode, exit_mode="oracle"))
  reference = lambda t: beam_search(
    model,
    encoder_inputs,
    num_beams=3,
    max_new_tokens=STEPS,
    eos_id=eos_id,
    length_penalty=0.8,
    threshold=t,
    prompt=prompts,
  )

  def telling(threshold) -> bool:  # hypotheses exit at >= 3 layers, and the deed run backfills
    exits = {e for pool in reference(threshold).pools for h in pool for e in h[2]}
    return (
      len(exits) >= 3
      and int(np.asarray(deed(encoder_inputs, threshold, prompts).backfilled).sum()) > 0
    )

  threshold = spread_threshold(
    lambda t: oracle(encoder_inputs, t, prompts),
    _candidate_thresholds(model, encoder_inputs, prompts),
    require=telling,
  )
  pools, layers_run, _ = reference(threshold)
  out = deed(encoder_inputs, threshold, prompts)
  assert_pools_equal(out, pools, model.config.pad_id)
  assert np.asarray(out.layers_run).tolist() == layers_run
  assert np.asarray(out.backfilled).sum() > 0
  full = beam_search(
    model, encoder_inputs, num_beams=3, max_new_tokens=STEPS, eos_id=eos_id, length_penalty=0.8,
    prompt=prompts,
  )  # fmt: skip
  static = generate(model, encoder_inputs, replace(decode, exit_mode="static"), prompts)
  assert_pools_equal(static, full.pools, model.config.pad_id)


def _varied_model():
  """A random model whose greedy outputs change within a row (chosen from the outputs, among a few
  seeds: random models mostly repeat one token), and its inputs."""
  for seed in range(8):
    config = tiny_config(vocab_size=37, max_target_length=12)
    model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=1.0)
    encoder_inputs, _ = random_inputs(model.config, batch=3, seed=1)
    decode = DecodeConfig(exit_mode="static", max_new_tokens=8)
    tokens = np.asarray(generate(model, encoder_inputs, decode).tokens)
    if any(len(set(row)) > 1 for row in tokens[:, :5].tolist()):
      return model, encoder_inputs
  raise AssertionError("no seed gives a random model whose outputs vary")


def test_a_prompt_continues_as_the_unprompted_decode_does():
  """Prompting the full model with the start token and its own first k tokens gives the rest of its
  unprompted output; the start token alone (list or array) is no prompt at all."""
  model, encoder_inputs = _varied_model()
  steps = 8
  config = DecodeConfig(exit_mode="static", max_new_tokens=steps)
  # An EOS the model never emits here (chosen from its output), so no row ends early.
  emitted = set(np.asarray(generate(model, encoder_inputs, config).tokens).ravel().tolist())
  never = [i for i in range(model.config.vocab_size) if i not in emitted | {config.eos_id}]
  config = replace(config, eos_id=never[0])
  run = make_generate(model, config)
  plain = np.asarray(run(encoder_inputs).tokens)
  bos = model.config.bos_id
  for given in ([[bos]] * 3, np.full((3, 1), bos)):
    np.testing.assert_array_equal(np.asarray(run(encoder_inputs, prompt=given).tokens), plain)
  ks = (1, 4, 2)  # each row continues from its own point
  prompts = [[bos] + plain[b, :k].tolist() for b, k in enumerate(ks)]
  continued = np.asarray(run(encoder_inputs, prompt=prompts).tokens)
  for b, k in enumerate(ks):
    np.testing.assert_array_equal(continued[b, : steps - k], plain[b, k:])


@pytest.mark.parametrize(
  "prompt, message",
  [
    ([[1, 4], [], [1]], r"prompt row 1 is empty"),
    ([[1, 4], [1, 99], [1]], r"prompt row 1 holds token id\(s\) \[99\] outside the vocabulary"),
    ([[1, -1], [1], [1]], r"prompt row 0 holds token id\(s\) \[-1\]"),
    ([[1, 2, 3, 4, 5, 6, 7], [1], [1]], r"prompt row 0 has 7 tokens: .* reads 11 positions"),
    ([[1], [1]], r"prompt has 2 row\(s\) but the encoder inputs have 3"),
    ("hello", r"must be a list of token-id sequences"),
    ([[1, 2.5], [1], [1]], r"prompt row 0 .* is not a sequence of int token ids"),
    (np.ones((3, 2, 1), np.int32), r"prompt array has shape \(3, 2, 1\)"),
    (np.ones((3, 2), np.float32), r"prompt array has shape \(3, 2\) and dtype float32"),
  ],
)
def test_bad_prompts_are_refused_before_compiling(prompt, message):
  model = spread_model("text", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=0)
  run = make_generate(model, DecodeConfig(max_new_tokens=5))
  with count_compilations() as count, pytest.raises(UserError, match=message):
    run(encoder_inputs, prompt=prompt)
  assert count[0] == 0
