"""Greedy DEED decoding (cache + just-in-time backfill) against the naive reference decoder."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.decoding import generate as generate_module
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generate import generate
from deed_jax.decoding.reference import greedy_reference
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config


def _model(encoder, seed):
  config = tiny_config(encoder=encoder, decoder_layers=4, vocab_size=11, max_target_length=10)
  return randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=0.5)


def _spread_threshold(model, encoder_inputs, decode):
  """The threshold (from confidence quantiles) under which the reference exits at the most layers."""
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  best = None
  for threshold in np.linspace(0.2, 0.9, 15):
    layers = np.asarray(reference(threshold).exit_layers)
    spread = len(set(layers[layers > 0].tolist()))
    if best is None or spread > best[0]:
      best = (spread, float(threshold))
  return best[1]


@pytest.mark.parametrize("encoder, seed, chunk", [("text", 0, 4), ("image", 1, 2), ("text", 2, 1)])
def test_deed_and_oracle_equal_the_naive_reference(encoder, seed, chunk):
  model = _model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=seed)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=9, backfill_chunk=chunk)
  threshold = _spread_threshold(model, encoder_inputs, decode)
  decode = dataclasses.replace(decode, threshold=threshold)
  expected = greedy_reference(model, encoder_inputs, decode)
  for mode in ("deed", "oracle"):
    out = generate(model, encoder_inputs, dataclasses.replace(decode, exit_mode=mode))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
    np.testing.assert_array_equal(np.asarray(out.exit_layers), np.asarray(expected.exit_layers))
    np.testing.assert_allclose(np.asarray(out.confidences), np.asarray(expected.confidences), atol=1e-5)
  layers = np.asarray(expected.exit_layers)
  assert len(set(layers[layers > 0].tolist())) >= 2
  backfilled = 0
  for b in range(4):  # Alone, a row's exits vary step to step, so skipped layers get backfilled.
    alone = generate(model, {k: v[b:b + 1] for k, v in encoder_inputs.items()}, decode)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(expected.tokens)[b])
    backfilled += int(np.asarray(alone.backfilled).sum())
  assert backfilled > 0  # Skipped layers really were computed later, and tokens stayed exact.


def test_rows_decode_as_if_alone_and_static_fixed_match_reference():
  model = _model("text", 3)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=3)
  decode = DecodeConfig(exit_mode="deed", max_new_tokens=8, threshold=0.5)
  batch = generate(model, encoder_inputs, decode)
  for b in range(3):
    alone = generate(model, {k: v[b:b + 1] for k, v in encoder_inputs.items()}, decode)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[b])
    np.testing.assert_array_equal(np.asarray(alone.exit_layers)[0], np.asarray(batch.exit_layers)[b])
  for mode, extra in (("static", {}), ("fixed", {"fixed_exit_layer": 2}), ("deed", {"threshold": 1.5})):
    config = dataclasses.replace(decode, exit_mode=mode, **extra)
    reference = greedy_reference(model, encoder_inputs, dataclasses.replace(
        config, exit_mode="static") if mode == "deed" else config)
    np.testing.assert_array_equal(np.asarray(generate(model, encoder_inputs, config).tokens),
                                  np.asarray(reference.tokens))


def test_threshold_and_batch_contents_do_not_recompile():
  model = _model("text", 4)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=4)
  other_inputs, _ = random_inputs(model.config, batch=2, seed=5)
  before = generate_module._generate._cache_size()
  for threshold in (0.3, 0.6, 0.95):
    generate(model, encoder_inputs, DecodeConfig(max_new_tokens=6, threshold=threshold))
  generate(model, other_inputs, DecodeConfig(max_new_tokens=6, threshold=0.4))
  assert generate_module._generate._cache_size() - before == 1
