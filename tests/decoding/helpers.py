"""Small random models whose exits spread over many layers, and thresholds that make them do so.

Which layers a random model exits at depends on its floats, which differ a little from one CPU (or
BLAS kernel) to another. So no test relies on a fixed threshold happening to spread exits: thresholds
are chosen from the model's own confidences, and only among thresholds that no decision sits close
to (`is_stable`), so that two correct implementations cannot disagree by rounding alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import numpy as np
from flax import nnx

from deed_jax.decoding.confidence import confidence
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
  config = tiny_config(encoder=encoder, decoder_layers=4, vocab_size=11, max_target_length=10,
                       **overrides)
  return randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(seed)), seed=seed, scale=0.5)


def distinct_exits(exit_layers) -> int:
  layers = np.asarray(exit_layers)
  return len(set(layers[layers > 0].tolist()))


def confidence_quantiles(model, encoder_inputs, max_new_tokens: int, kind: str = "max_prob"
                         ) -> np.ndarray:
  """Candidate thresholds: quantiles of every exit's confidence (`kind`) along the full model's greedy
  output."""
  static = greedy_reference(model, encoder_inputs,
                            DecodeConfig(exit_mode="static", max_new_tokens=max_new_tokens))
  tokens = np.asarray(static.tokens)
  prefix = np.concatenate([np.full((len(tokens), 1), model.config.bos_id), tokens[:, :-1]], axis=1)
  confidences = np.asarray(confidence(model(encoder_inputs, prefix), kind))  # [L, B, N]
  return np.quantile(confidences, np.linspace(0.05, 0.95, 19))


def frequent_token(model, encoder_inputs, steps: int) -> int:
  """An EOS id that the full model emits mid-sequence, so rows end at different steps (random models
  rarely emit id 2)."""
  tokens = np.asarray(greedy_reference(model, encoder_inputs, DecodeConfig(
      exit_mode="static", max_new_tokens=steps)).tokens)
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


def find_threshold(decode_fn: Callable, thresholds, require: Callable[[float], bool] | None = None,
                   margin: float = THRESHOLD_MARGIN) -> float | None:
  """The stable threshold among `thresholds` whose exits (`decode_fn(threshold)`: a greedy or beam
  output) cover the most layers, among those for which `require(threshold)` holds (e.g. "the deed
  decode backfilled something"); None if there is none. `decode_fn` should be compiled once with a
  traced threshold."""
  spread = {float(t): distinct_exits(_decisions(decode_fn(float(t)))[1]) for t in thresholds}
  for threshold in sorted(spread, key=lambda t: -spread[t]):  # widest spread first
    if (require is None or require(threshold)) and is_stable(decode_fn, threshold, margin):
      return threshold
  return None


def spread_threshold(decode_fn: Callable, thresholds, require: Callable[[float], bool] | None = None,
                     margin: float = THRESHOLD_MARGIN) -> float:
  """`find_threshold`, which must find one."""
  threshold = find_threshold(decode_fn, thresholds, require, margin)
  assert threshold is not None, (f"no candidate threshold is stable (no decision within {margin})"
                                 f"{'' if require is None else ' and meets the requirement'}: "
                                 f"{thresholds}")
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
