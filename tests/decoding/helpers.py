"""Small random models whose exits spread over many layers, and thresholds that make them do so.

Which layers a random model exits at depends on its floats, which differ a little from one CPU (or
BLAS kernel) to another. So no test relies on a fixed threshold happening to spread exits: thresholds
are chosen from the model's own confidences, and only among thresholds that no decision sits close
to (`is_stable`), so that two correct implementations cannot disagree by rounding alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from deed_jax.decoding.confidence import exit_confidences, exit_signals
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.reference import greedy_reference
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import randomize, tiny_config

# (encoder, seed) pairs of 4-layer random models; every test that uses them asserts the spread it needs.
SPREAD_SEEDS = (("text", 0), ("image", 3), ("text", 2), ("image", 2))

# No confidence along a decode may lie within this distance of its threshold: far above the float32
# differences between two ways of computing one confidence (~1e-6), far below the confidences' spread.
THRESHOLD_MARGIN = 1e-4


def spread_model(encoder: str, seed: int, **overrides) -> MultiExitEncoderDecoder:
  config = tiny_config(
    **{
      "encoder": encoder,
      "decoder_layers": 4,
      "vocab_size": 11,
      "max_target_length": 10,
      **overrides,
    }
  )
  return randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=0.5)


def distinct_exits(exit_layers) -> int:
  layers = np.asarray(exit_layers)
  return len(set(layers[layers > 0].tolist()))


def full_model_prefix(model, encoder_inputs, max_new_tokens: int) -> np.ndarray:
  """The decoder inputs [B, N] of the full model's greedy output (BOS, then its tokens but the last):
  teacher-forcing them reproduces every exit along that decode."""
  static = greedy_reference(
    model, encoder_inputs, DecodeConfig(exit_mode="static", max_new_tokens=max_new_tokens)
  )
  tokens = np.asarray(static.tokens)
  return np.concatenate([np.full((len(tokens), 1), model.config.bos_id), tokens[:, :-1]], axis=1)


def confidence_quantiles(
  model, encoder_inputs, max_new_tokens: int, kind: str = "max_prob", count: int = 19
) -> np.ndarray:
  """Candidate thresholds: `count` quantiles of every exit's confidence (`kind`) along the full
  model's greedy output."""
  prefix = full_model_prefix(model, encoder_inputs, max_new_tokens)
  features, states = model.exit_features(encoder_inputs, prefix, return_states=True)
  confidences = np.asarray(exit_confidences(kind, exit_signals(model, features, states)))  # [L,B,N]
  return np.quantile(confidences, np.linspace(0.05, 0.95, count))


def spread_probe(model, encoder_inputs, max_new_tokens: int, spread: float = 1.5):
  """Rescale the model's exit classifier so that, along the full model's greedy output, every exit's
  logit has mean 0 and std `spread`: a random probe is dominated by its per-exit bias (features vary
  little between tokens of a random model), which would make every token exit at the same layer.
  -> the model (changed in place)."""
  prefix = full_model_prefix(model, encoder_inputs, max_new_tokens)
  probe = model.decoder.exit_classifier
  logits = np.asarray(probe.logit(model.exit_features(encoder_inputs, prefix)))  # [L, B, N]
  bias = np.asarray(probe.bias[...])  # [L]
  centred = logits - bias[:, None, None]
  scale = spread / centred.std(axis=(1, 2))  # [L]
  probe.kernel[...] = probe.kernel[...] * scale[:, None]
  probe.bias[...] = -centred.mean(axis=(1, 2)) * scale
  return model


def frequent_token(model, encoder_inputs, steps: int) -> int:
  """An EOS id that the full model emits mid-sequence, so rows end at different steps (random models
  rarely emit id 2)."""
  tokens = np.asarray(
    greedy_reference(
      model, encoder_inputs, DecodeConfig(exit_mode="static", max_new_tokens=steps)
    ).tokens
  )
  return int(np.bincount(tokens[:, 2:].ravel()).argmax())


def _decisions(out) -> tuple[np.ndarray, np.ndarray]:
  """Tokens and exit layers of a greedy output, or of every beam hypothesis."""
  out = out.beams if getattr(out, "beams", None) is not None else out
  return np.asarray(out.tokens), np.asarray(out.exit_layers)


def is_stable(decode_fn: Callable, threshold: float, margin: float = THRESHOLD_MARGIN) -> bool:
  """Whether moving `threshold` by `margin` either way changes no token and no exit: then no
  confidence compared along the way lies within the margin of it (the path, and so every confidence
  compared on it, is the same at all three thresholds)."""
  here = _decisions(decode_fn(threshold))
  for moved in (threshold - margin, threshold + margin):
    there = _decisions(decode_fn(moved))
    if not all(np.array_equal(a, b) for a, b in zip(here, there)):
      return False
  return True


def find_threshold(
  decode_fn: Callable,
  thresholds,
  require: Callable[[float], bool] | None = None,
  margin: float = THRESHOLD_MARGIN,
) -> float | None:
  """The stable threshold among `thresholds` whose exits (`decode_fn(threshold)`: a greedy or beam
  output) cover the most layers, among those for which `require(threshold)` holds (e.g. "the deed
  decode backfilled something"); None if there is none. `decode_fn` should be compiled once with a
  traced threshold."""
  spread = {float(t): distinct_exits(_decisions(decode_fn(float(t)))[1]) for t in thresholds}
  for threshold in sorted(spread, key=lambda t: -spread[t]):  # widest spread first
    if (require is None or require(threshold)) and is_stable(decode_fn, threshold, margin):
      return threshold
  return None


def spread_threshold(
  decode_fn: Callable,
  thresholds,
  require: Callable[[float], bool] | None = None,
  margin: float = THRESHOLD_MARGIN,
) -> float:
  """`find_threshold`, which must find one."""
  threshold = find_threshold(decode_fn, thresholds, require, margin)
  assert threshold is not None, (
    f"no candidate threshold is stable (no decision within {margin})"
    f"{'' if require is None else ' and meets the requirement'}: "
    f"{thresholds}"
  )
  return threshold


@contextlib.contextmanager
def count_compilations():
  """Counts the XLA compilations inside the block, from JAX's own monitoring events: `[count]`."""
  count = [0]

  def listener(event: str, duration: float, **kwargs):
    del duration, kwargs
    count[0] += event == "/jax/core/compile/backend_compile_duration"

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def replace(config: DecodeConfig, **changes) -> DecodeConfig:
  return dataclasses.replace(config, **changes)


def assert_same(out, expected):
  """Greedy: tokens and exits equal, confidences within float error."""
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  np.testing.assert_array_equal(np.asarray(out.exit_layers), np.asarray(expected.exit_layers))
  np.testing.assert_allclose(
    np.asarray(out.confidences), np.asarray(expected.confidences), atol=1e-5
  )


def assert_pools_equal(out, pools, pad_id):
  """Beam search: every hypothesis of every row in `pools` (the straightforward beam search's), best
  first: tokens (pad after EOS), exits, confidences, score."""
  steps = np.asarray(out.beams.tokens).shape[-1]
  for b, pool in enumerate(pools):
    assert len(pool) == np.asarray(out.beams.tokens).shape[1]
    for k, (score, tokens, exits, confs) in enumerate(pool):
      n = len(tokens)
      assert np.asarray(out.beams.tokens)[b, k].tolist() == tokens + [pad_id] * (steps - n), (b, k)
      assert np.asarray(out.beams.exit_layers)[b, k].tolist() == exits + [0] * (steps - n), (b, k)
      np.testing.assert_allclose(np.asarray(out.beams.confidences)[b, k, :n], confs, rtol=1e-4)
      np.testing.assert_allclose(np.asarray(out.beams.scores)[b, k], score, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(out.beams.tokens)[:, 0])
  np.testing.assert_array_equal(np.asarray(out.scores), np.asarray(out.beams.scores)[:, 0])
