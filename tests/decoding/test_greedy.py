"""Greedy decoding (deed, oracle, copy, static, fixed) against the naive reference decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deed_jax.decoding.confidence import confidence
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import generate, make_generate
from deed_jax.decoding.reference import greedy_reference
from tests.conftest import random_inputs
from tests.decoding.helpers import (
  SPREAD_SEEDS,
  assert_same,
  confidence_quantiles,
  count_compilations,
  distinct_exits,
  find_threshold,
  frequent_token,
  replace,
  spread_model,
  spread_threshold,
)


def _rows(encoder_inputs, b):
  return {k: v[b : b + 1] for k, v in encoder_inputs.items()}


@pytest.mark.parametrize(
  "encoder, seed, chunk",
  [
    ("text", 0, 4),
    pytest.param("image", 3, 2, marks=pytest.mark.slow),
    ("image", 2, 3),  # chunk 3: padded widths 1, 2, 3
    pytest.param("text", 0, 1, marks=pytest.mark.slow),
  ],
)  # chunk 1: no block is wider than one
def test_deed_and_oracle_equal_the_naive_reference(encoder, seed, chunk):
  model = spread_model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=seed)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=9, backfill_chunk=chunk)
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  deed = make_generate(model, decode)
  backfills = lambda t: int(np.asarray(deed(encoder_inputs, t).backfilled).sum()) > 0
  threshold = spread_threshold(
    reference, confidence_quantiles(model, encoder_inputs, 9), require=backfills
  )
  expected = reference(threshold)
  assert distinct_exits(expected.exit_layers) >= 3  # Exits really happen at many layers.
  out = deed(encoder_inputs, threshold)
  assert_same(out, expected)
  assert np.asarray(out.backfilled).sum() > 0  # The batch, too, computed skipped layers later.
  assert_same(
    generate(model, encoder_inputs, replace(decode, exit_mode="oracle", threshold=threshold)),
    expected,
  )
  backfilled = 0
  for b in range(4):  # Alone, a row's exits vary step to step, so skipped layers get backfilled.
    alone = deed(_rows(encoder_inputs, b), threshold)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(expected.tokens)[b])
    np.testing.assert_array_equal(
      np.asarray(alone.exit_layers)[0], np.asarray(expected.exit_layers)[b]
    )
    backfilled += int(np.asarray(alone.backfilled).sum())
  assert backfilled > 0  # Skipped layers really were computed later, and tokens stayed exact.


@pytest.mark.parametrize("encoder, seed", SPREAD_SEEDS[:2])
def test_copy_equals_its_naive_reference(encoder, seed):
  model = spread_model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=seed)
  decode = DecodeConfig(exit_mode="copy", max_new_tokens=9)
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  threshold = spread_threshold(reference, confidence_quantiles(model, encoder_inputs, 9))
  expected = reference(threshold)
  assert distinct_exits(expected.exit_layers) >= 3
  assert_same(generate(model, encoder_inputs, replace(decode, threshold=threshold)), expected)
  # Copied states are not the full model's: the copy model's confidences depart from DEED's.
  deed = greedy_reference(model, encoder_inputs, replace(decode, exit_mode="deed"), threshold)
  assert not np.allclose(np.asarray(deed.confidences), np.asarray(expected.confidences), atol=1e-3)


def test_layers_run_is_the_deepest_exit_among_rows_still_decoding():
  """The batch rule: a step runs exactly as deep as its deepest live exit; rows that have finished
  (emitted EOS) or exited lower never force depth."""
  model = spread_model("text", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=0)
  decode = DecodeConfig(
    exit_mode="deed", max_new_tokens=9, eos_id=frequent_token(model, encoder_inputs, 9)
  )  # rows end at different steps
  layers = model.config.decoder_layers
  run = make_generate(model, decode)

  def telling(threshold) -> bool:
    """Some step has a finished row beside live ones that all exit below the top, and some step has
    live rows exiting at different layers."""
    exits = np.asarray(run(encoder_inputs, threshold).exit_layers).T  # [N, B], 0: finished
    finished_beside_shallow = (exits == 0).any(1) & (exits.max(1) > 0) & (exits.max(1) < layers)
    mixed = [len(set(step[step > 0].tolist())) > 1 for step in exits]
    return bool(finished_beside_shallow.any() and any(mixed))

  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  threshold = spread_threshold(
    reference, confidence_quantiles(model, encoder_inputs, 9), require=telling
  )
  out = run(encoder_inputs, threshold)
  assert_same(out, reference(threshold))
  exits = np.asarray(out.exit_layers)  # [B, N]
  np.testing.assert_array_equal(np.asarray(out.layers_run), exits.max(0))


def test_rows_decode_as_if_alone_and_static_fixed_match_reference():
  model = spread_model("text", 3)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=3)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=8)
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  decode = replace(
    decode, threshold=spread_threshold(reference, confidence_quantiles(model, encoder_inputs, 8))
  )
  batch = generate(model, encoder_inputs, decode)
  assert distinct_exits(batch.exit_layers) >= 2  # Rows (and steps) exit at different layers.
  for b in range(3):
    alone = generate(model, _rows(encoder_inputs, b), decode)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[b])
    np.testing.assert_array_equal(
      np.asarray(alone.exit_layers)[0], np.asarray(batch.exit_layers)[b]
    )
  static = greedy_reference(model, encoder_inputs, replace(decode, exit_mode="static"))
  np.testing.assert_array_equal(
    np.asarray(generate(model, encoder_inputs, replace(decode, threshold=1.5)).tokens),
    np.asarray(static.tokens),
  )
  for k in (1, 3):
    config = replace(decode, exit_mode="fixed", fixed_exit_layer=k)
    out = generate(model, encoder_inputs, config)
    assert_same(out, greedy_reference(model, encoder_inputs, config))
    assert int(np.asarray(out.layers_run).max()) == k
  out = generate(model, encoder_inputs, replace(decode, exit_mode="static"))
  assert_same(out, static)
  # Scores are the emitted tokens' log-probs, summed: here recomputed from the full model's logits.
  tokens = np.asarray(static.tokens)
  prefix = np.concatenate([np.full((3, 1), model.config.bos_id), tokens[:, :-1]], axis=1)
  log_probs = np.asarray(jax.nn.log_softmax(model(encoder_inputs, prefix)[-1]))  # [B, N, V]
  picked = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  live = np.asarray(static.exit_layers) > 0
  np.testing.assert_allclose(np.asarray(out.scores), (picked * live).sum(1), rtol=1e-5)


def test_threshold_and_batch_contents_do_not_recompile():
  model = spread_model("text", 4)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=4)
  other_inputs, _ = random_inputs(model.config, batch=2, seed=5)
  for decode in (
    DecodeConfig(max_new_tokens=6),
    DecodeConfig(max_new_tokens=6, strategy="beam", num_beams=2),
  ):
    generate(model, encoder_inputs, replace(decode, threshold=0.3))  # compiles
    with count_compilations() as compiled:
      for threshold in (0.6, np.float32(0.95), jnp.float32(2.0)):
        generate(model, encoder_inputs, replace(decode, threshold=threshold))
      make_generate(model, decode)(other_inputs, threshold=0.4)
    assert compiled[0] == 0
  with count_compilations() as compiled:  # The count does see a compilation: a new batch size.
    generate(model, _rows(encoder_inputs, 0), decode)
  assert compiled[0] >= 1


def test_bad_inputs_fail_before_compiling():
  model = spread_model("text", 4)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=4)
  bad_ids = dict(encoder_inputs, input_ids=np.asarray(encoder_inputs["input_ids"]).copy())
  bad_ids["input_ids"][1, 0] = 11
  failures = [
    (bad_ids, DecodeConfig(max_new_tokens=6), r"11"),
    (encoder_inputs, DecodeConfig(max_new_tokens=11), "max_new_tokens=11 exceeds"),
    (
      encoder_inputs,
      DecodeConfig(max_new_tokens=6, exit_mode="fixed", fixed_exit_layer=5),
      "fixed_exit_layer=5",
    ),
    (
      encoder_inputs,
      DecodeConfig(max_new_tokens=6, pad_id=-1),
      r"pad_id=-1 is outside the vocabulary",
    ),
  ]
  with count_compilations() as compiled:
    for inputs, config, message in failures:
      with pytest.raises(ValueError, match=message):
        generate(model, inputs, config)
    run = make_generate(model, DecodeConfig(max_new_tokens=6))
    for threshold in (float("nan"), True, -0.5, np.array([0.5]), "0.5"):
      with pytest.raises(ValueError, match="threshold=.* must be a number >= 0"):
        run(encoder_inputs, threshold)
  assert compiled[0] == 0


def _replay_block_rule(layers_run, num_layers: int, chunk: int):
  """The layer calls the block rule makes, replayed from the per-step depths [N]: at step p, each layer
  j < depth runs its deferred positions [fill_j, p) as whole `chunk`-wide calls, then one call of the
  smallest power of two (at most `chunk`) that holds the rest; then p alone.
  -> ([(first position, real positions, width)], backfilled [L])."""
  fill, calls, backfilled = [0] * num_layers, [], np.zeros(num_layers, np.int64)
  for p, depth in enumerate(layers_run):
    for j in range(depth):
      start, size = fill[j], p - fill[j]
      backfilled[j] += size
      calls += [(start + i * chunk, chunk, chunk) for i in range(size // chunk)]
      if size % chunk:
        rest = size % chunk
        calls.append((p - rest, rest, min(chunk, 1 << (rest - 1).bit_length())))
      calls.append((p, 1, 1))
      fill[j] = p + 1
  return calls, backfilled


@pytest.mark.parametrize("chunk", [5, pytest.param(8, marks=pytest.mark.slow), 16])
def test_padded_blocks_stay_exact(chunk):
  """Blocks whose last call is padded past the deferred positions, with max_new_tokens = every
  decoder position the model has (chunk 16 > 10 positions: capped at 10, the cache's slack too)."""
  model = spread_model("text", 0)
  steps = model.config.max_target_length
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=0)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=steps, backfill_chunk=chunk)
  deed = make_generate(model, decode)
  layers = model.config.decoder_layers
  has_padding = lambda calls: any(width > real for _, real, width in calls)
  chunk = min(chunk, steps)
  telling = lambda t: has_padding(
    _replay_block_rule(np.asarray(deed(encoder_inputs, t).layers_run), layers, chunk)[0]
  )
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  threshold = spread_threshold(
    reference, confidence_quantiles(model, encoder_inputs, steps), require=telling
  )
  out = deed(encoder_inputs, threshold)
  assert_same(out, reference(threshold))
  calls, backfilled = _replay_block_rule(np.asarray(out.layers_run), layers, chunk)
  np.testing.assert_array_equal(np.asarray(out.backfilled), backfilled)  # The replay is the run.
  assert has_padding(calls)  # Some block's last call ran padded.


@pytest.mark.parametrize(
  "overrides, options",
  [
    ({"position_embedding": "relative", "norm_type": "rmsnorm"}, {"confidence": "margin"}),
    ({"norm_position": "post"}, {"confidence": "entropy"}),
    ({}, {"min_exit_layer": 2}),
  ],
)
def test_deed_equals_the_naive_reference_across_model_and_exit_options(overrides, options):
  """T5-style relative positions + RMSNorm, post-norm (BART); margin and entropy confidences; a
  minimum exit layer. The first of the spread models with a stable threshold that backfills is tested."""
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=9, backfill_chunk=4, **options)
  for encoder, seed in SPREAD_SEEDS:
    model = spread_model(encoder, seed, **overrides)
    encoder_inputs, _ = random_inputs(model.config, batch=3, seed=seed)
    deed = make_generate(model, decode)
    reference = jax.jit(
      lambda t, model=model, inputs=encoder_inputs: greedy_reference(model, inputs, decode, t)
    )
    backfills = lambda t, inputs=encoder_inputs, deed=deed: (
      int(np.asarray(deed(inputs, t).backfilled).sum()) > 0
    )
    quantiles = confidence_quantiles(model, encoder_inputs, 9, decode.confidence)
    threshold = find_threshold(reference, quantiles, require=backfills)
    if threshold is not None:
      break
  assert threshold is not None, "no spread model has a stable threshold that backfills"
  expected = reference(threshold)
  exits = np.asarray(expected.exit_layers)
  assert distinct_exits(exits) >= 2 and exits[exits > 0].min() >= decode.min_exit_layer
  assert_same(deed(encoder_inputs, threshold), expected)


def test_bf16_deed_decisions_match_the_full_forward_within_rounding():
  """bf16 activations round differently in a backfill block than one position at a time, so exact
  token equality with a reference is not the claim: every decision DEED took must agree, within
  bf16 rounding, with the full model's forward along DEED's own tokens."""
  model = spread_model("text", 0, dtype="bfloat16")
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=0)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=9, backfill_chunk=4)
  deed = make_generate(model, decode)
  threshold = next(
    float(t)
    for t in confidence_quantiles(model, encoder_inputs, 9)[::-1]
    if np.asarray(deed(encoder_inputs, float(t)).backfilled).sum() > 0
  )
  out = deed(encoder_inputs, threshold)
  tokens, exits = np.asarray(out.tokens), np.asarray(out.exit_layers)  # [B, N]
  assert distinct_exits(exits) >= 2
  prefix = np.concatenate([np.full((3, 1), model.config.bos_id), tokens[:, :-1]], axis=1)
  logits = np.asarray(model(encoder_inputs, prefix))  # [L, B, N, V] float32 from bf16 features
  conf = np.asarray(confidence(logits, "max_prob"))  # [L, B, N]
  tolerance, last = 2e-2, model.config.decoder_layers
  for b, p in zip(*np.nonzero(exits)):
    e = exits[b, p] - 1
    assert e == last - 1 or conf[e, b, p] >= threshold - tolerance, (b, p)  # confident at its exit
    assert (conf[:e, b, p] < threshold + tolerance).all(), (b, p)  # and not below it
    assert logits[e, b, p, tokens[b, p]] >= logits[e, b, p].max() - 0.1, (b, p)  # its argmax
    assert abs(float(np.asarray(out.confidences)[b, p]) - conf[e, b, p]) <= tolerance
