"""The naive reference decoder against a step-by-step recomputation with the model's plain forward,
and the decode-config checks."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import nnx

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.reference import greedy_at_exit, greedy_reference
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config
from tests.decoding.helpers import distinct_exits, spread_threshold


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _row_by_row(model, encoder_inputs, threshold, min_exit_layer, steps):
  """Each row alone; at each step the full forward over the prefix; first layer with max-prob >= tau."""
  cfg = model.config
  rows = []
  for b in range(len(next(iter(encoder_inputs.values())))):
    row_inputs = {k: v[b : b + 1] for k, v in encoder_inputs.items()}
    prefix, tokens, layers, confs = [cfg.bos_id], [], [], []
    for _ in range(steps):
      logits = np.asarray(model(row_inputs, np.array([prefix], np.int32)))[:, 0, -1]  # [L, V]
      probs = _softmax(logits.astype(np.float64))
      exit_index = next(
        (
          l
          for l in range(cfg.decoder_layers)
          if l >= min_exit_layer - 1 and probs[l].max() >= threshold
        ),
        cfg.decoder_layers - 1,
      )
      token = int(np.argmax(logits[exit_index]))
      tokens.append(token), layers.append(exit_index + 1), confs.append(probs[exit_index].max())
      if token == cfg.eos_id:
        break
      prefix.append(token)
    rows.append((tokens, layers, confs))
  return rows


@pytest.mark.parametrize(
  "seed, encoder",
  [
    (0, "text"),
    pytest.param(1, "image", marks=pytest.mark.slow),
    pytest.param(0, "image", marks=pytest.mark.slow),
    pytest.param(1, "text", marks=pytest.mark.slow),
  ],
)
def test_first_confident_exit_matches_row_by_row_recomputation(encoder, seed):
  config = tiny_config(encoder=encoder, decoder_layers=4, vocab_size=11)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=0.5)
  encoder_inputs, _ = random_inputs(config, batch=4, seed=seed)
  steps = 8
  static = greedy_reference(
    model, encoder_inputs, DecodeConfig(exit_mode="static", max_new_tokens=steps)
  )
  prefix = np.concatenate(
    [np.full((4, 1), config.bos_id), np.asarray(static.tokens)[:, :-1]], axis=1
  )
  confidences = _softmax(np.asarray(model(encoder_inputs, prefix), np.float64)).max(-1)  # [L, B, N]
  # Among confidence quantiles and minimum exit layers, take the setting whose exits spread over the
  # most layers, with no confidence near the threshold. The threshold is traced: one compilation serves
  # every threshold tried.
  candidates = []
  for min_exit_layer in (1, 2):
    decode = DecodeConfig(exit_mode="deed", max_new_tokens=steps, min_exit_layer=min_exit_layer)
    reference = jax.jit(
      lambda threshold, decode=decode: greedy_reference(model, encoder_inputs, decode, threshold)
    )
    threshold = spread_threshold(reference, np.quantile(confidences, np.linspace(0.05, 0.95, 19)))
    out = reference(threshold)
    candidates.append((distinct_exits(out.exit_layers), threshold, min_exit_layer, out))
  _, threshold, min_exit_layer, out = max(candidates, key=lambda c: c[0])
  tokens, layers, confs = (np.asarray(x) for x in out)
  for b, (row_tokens, row_layers, row_confs) in enumerate(
    _row_by_row(model, encoder_inputs, threshold, min_exit_layer, steps)
  ):
    n = len(row_tokens)
    assert tokens[b, :n].tolist() == row_tokens
    assert layers[b, :n].tolist() == row_layers
    np.testing.assert_allclose(confs[b, :n], row_confs, rtol=1e-4)
    assert (tokens[b, n:] == config.pad_id).all() and (layers[b, n:] == 0).all()
  assert len(set(layers[layers > 0].tolist())) >= 2  # Exits really happen at different layers.


def test_threshold_above_one_is_static_and_fixed_is_that_exit():
  config = tiny_config(decoder_layers=3)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=0, scale=0.5)
  encoder_inputs, _ = random_inputs(config)
  never = greedy_reference(model, encoder_inputs, DecodeConfig(threshold=1.5, max_new_tokens=6))
  static = greedy_reference(
    model, encoder_inputs, DecodeConfig(exit_mode="static", max_new_tokens=6)
  )
  np.testing.assert_array_equal(np.asarray(never.tokens), np.asarray(static.tokens))
  np.testing.assert_array_equal(
    np.asarray(never.tokens), np.asarray(greedy_at_exit(model, encoder_inputs, 3, 6))
  )
  for k in (1, 2):
    fixed = greedy_reference(
      model, encoder_inputs, DecodeConfig(exit_mode="fixed", fixed_exit_layer=k, max_new_tokens=6)
    )
    np.testing.assert_array_equal(
      np.asarray(fixed.tokens), np.asarray(greedy_at_exit(model, encoder_inputs, k, 6))
    )
    live = np.asarray(fixed.exit_layers) > 0
    assert (np.asarray(fixed.exit_layers)[live] == k).all()
  zero = greedy_reference(
    model, encoder_inputs, DecodeConfig(threshold=0.0, min_exit_layer=2, max_new_tokens=6)
  )
  np.testing.assert_array_equal(
    np.asarray(zero.tokens), np.asarray(greedy_at_exit(model, encoder_inputs, 2, 6))
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(threshold=math.nan), "threshold=nan must be a number >= 0"),
    (dict(threshold=-0.1), "threshold=-0.1 must be"),
    (dict(num_beams=0), "num_beams=0 must be >= 1"),
    (dict(exit_mode="early"), "exit_mode='early' is not one of"),
    (dict(confidence="cosine"), "confidence='cosine' is not one of"),
    (dict(exit_mode="fixed"), "needs fixed_exit_layer"),
  ],
)
def test_bad_decode_configs_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    DecodeConfig(**kwargs)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(fixed_exit_layer=4, exit_mode="fixed"), r"fixed_exit_layer=4 is outside 1..3"),
    (dict(fixed_exit_layer=0, exit_mode="fixed"), r"fixed_exit_layer=0 is outside 1..3"),
    (dict(max_new_tokens=11), "max_new_tokens=11 exceeds the model's max_target_length=10"),
    (dict(eos_id=99), r"eos_id=99 is outside the vocabulary \[0, 37\)"),
    (dict(min_exit_layer=5), "min_exit_layer=5 is outside"),
  ],
)
def test_decode_config_is_checked_against_the_model(kwargs, message):
  with pytest.raises(ValueError, match=message):
    DecodeConfig(**{"max_new_tokens": 8, **kwargs}).resolve(tiny_config(decoder_layers=3))
