"""Where exits may happen (`min_exit_layer`, `allowed_exit_layers`) and the head-free confidences
(`state`, and the learned `classifier`): exact against the naive references, and the LM head traced
only where it is needed."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from deed_jax.decoding import make_generate
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.reference import greedy_reference
from tests.conftest import random_inputs
from tests.decoding.beam_reference import beam_search
from tests.decoding.helpers import (
  assert_pools_equal,
  assert_same,
  confidence_quantiles,
  distinct_exits,
  frequent_token,
  replace,
  spread_model,
  spread_probe,
  spread_threshold,
)

STEPS = 9
# 6 layers; exits allowed at 2, 3 and 5 (and always at 6): neither 1 (below min_exit_layer) nor 4.
EXIT_OPTIONS = dict(min_exit_layer=2, allowed_exit_layers=(1, 2, 3, 5))
ALLOWED = {2, 3, 5, 6}


def _six_layer_model(seed, exit_classifier="none"):
  return spread_model("text", seed, decoder_layers=6, exit_classifier=exit_classifier)


@pytest.mark.parametrize(
  "mode, confidence, probe",
  [
    ("deed", "state", "none"),
    ("copy", "state", "none"),
    ("deed", "classifier", "linear"),
    ("copy", "classifier", "mlp"),
  ],
)
def test_head_free_confidence_with_restricted_exits_equals_the_naive_reference(
  mode, confidence, probe
):
  """Greedy deed (and oracle) / copy with a head-free confidence equal the naive decoders, which
  recompute every layer's state saturation, or every exit's classifier probability, from the full
  (or copied-state) forward."""
  model = _six_layer_model(2, probe)
  encoder_inputs, _ = random_inputs(model.config, batch=4, seed=2)
  if probe != "none":
    spread_probe(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    exit_mode=mode, max_new_tokens=STEPS, confidence=confidence, backfill_chunk=4, **EXIT_OPTIONS
  )
  reference = jax.jit(lambda t: greedy_reference(model, encoder_inputs, decode, t))
  unrestricted = jax.jit(
    lambda t: greedy_reference(
      model, encoder_inputs, replace(decode, min_exit_layer=1, allowed_exit_layers=None), t
    )
  )
  run = make_generate(model, decode)

  def telling(threshold) -> bool:
    """Exits at >= 3 layers; deed also backfills; without the restriction some token would exit at
    a layer it forbids (so the restriction is really applied)."""
    out = run(encoder_inputs, threshold)
    backfills = mode != "deed" or int(np.asarray(out.backfilled).sum()) > 0
    free = np.asarray(unrestricted(threshold).exit_layers)
    return (
      distinct_exits(out.exit_layers) >= 3 and backfills and bool(set(free[free > 0]) - ALLOWED)
    )

  threshold = spread_threshold(
    reference, confidence_quantiles(model, encoder_inputs, STEPS, confidence, 39), require=telling
  )
  expected = reference(threshold)
  exits = np.asarray(expected.exit_layers)
  assert distinct_exits(exits) >= 3 and set(exits[exits > 0].tolist()) <= ALLOWED
  assert_same(run(encoder_inputs, threshold), expected)
  if mode == "deed":
    assert_same(
      make_generate(model, replace(decode, exit_mode="oracle"))(encoder_inputs, threshold), expected
    )


@pytest.mark.parametrize("confidence, probe", [("state", "none"), ("classifier", "mlp")])
def test_head_free_confidence_beam_equals_straightforward_beam_search(confidence, probe):
  """The straightforward beam search recomputes the confidences in NumPy float64 (the classifier
  written out from its parameters)."""
  model = _six_layer_model(2, probe)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=2)
  if probe != "none":
    spread_probe(model, encoder_inputs, STEPS)
  eos_id = frequent_token(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    strategy="beam",
    num_beams=3,
    max_new_tokens=STEPS,
    confidence=confidence,
    length_penalty=0.8,
    eos_id=eos_id,
    backfill_chunk=4,
    **EXIT_OPTIONS,
  )
  oracle = make_generate(model, replace(decode, exit_mode="oracle"))
  deed = make_generate(model, decode)
  reference = lambda t, **options: beam_search(
    model,
    encoder_inputs,
    num_beams=3,
    max_new_tokens=STEPS,
    eos_id=eos_id,
    length_penalty=0.8,
    threshold=t,
    confidence=confidence,
    **(options or EXIT_OPTIONS),
  )
  exits = lambda pools: {e for pool in pools for h in pool for e in h[2]}

  def telling(threshold) -> bool:
    """Hypotheses exit at >= 3 layers, the deed run backfills, and without the restriction some
    hypothesis would exit at a layer it forbids."""
    free = exits(reference(threshold, min_exit_layer=1, allowed_exit_layers=None).pools)
    return (
      len(exits(reference(threshold).pools)) >= 3
      and bool(free - ALLOWED)
      and int(np.asarray(deed(encoder_inputs, threshold).backfilled).sum()) > 0
    )

  threshold = spread_threshold(
    lambda t: oracle(encoder_inputs, t),
    confidence_quantiles(model, encoder_inputs, STEPS, confidence, 39),
    require=telling,
  )
  pools, layers_run, _ = reference(threshold)
  assert len(exits(pools)) >= 3 and exits(pools) <= ALLOWED
  out = deed(encoder_inputs, threshold)
  assert_pools_equal(out, pools, model.config.pad_id)
  assert np.asarray(out.layers_run).tolist() == layers_run


def _traced_heads(model, decode: DecodeConfig, encoder_inputs) -> int:
  """LM-head matmuls in the lowered program: dot_generals whose result ends in the vocabulary."""
  text = make_generate(model, decode).lower(encoder_inputs, 0.5).as_text()
  vocab = model.config.vocab_size
  return sum(
    1
    for line in text.splitlines()
    if "dot_general" in line and re.search(rf"x{vocab}xf32>\s*$", line)
  )


@pytest.mark.parametrize(
  "options, head_layers",
  [
    ({}, {1, 2, 3, 4}),  # every layer may exit
    ({"min_exit_layer": 3}, {3, 4}),
    ({"allowed_exit_layers": (2,)}, {2, 4}),
    ({"allowed_exit_layers": (1, 3), "min_exit_layer": 2}, {3, 4}),
    ({"exit_mode": "oracle", "min_exit_layer": 3}, {3, 4}),
    ({"confidence": "state"}, None),  # once, at the exit
    ({"confidence": "classifier"}, None),
    ({"exit_mode": "static"}, None),
    ({"exit_mode": "fixed", "fixed_exit_layer": 2}, None),
    (
      {"strategy": "beam", "num_beams": 2},
      {1, 2, 3, 4},
    ),  # beams score with the exits' own log-probs
    ({"strategy": "beam", "num_beams": 2, "confidence": "state"}, None),
    ({"strategy": "beam", "num_beams": 2, "confidence": "classifier"}, None),
  ],
)
def test_the_head_runs_only_where_a_row_may_exit(options, head_layers):
  """The head is traced at exactly the layers that may exit (`head_layers`, 1-based), or once after
  the stack (None). deed's step holds layers 2..L twice (the one-position chain and the backfilling
  layers), so each of those layers' heads appears twice in its program."""
  # 37: no other dimension has this size
  model = spread_model("text", 0, vocab_size=37, exit_classifier="linear")
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=0)
  decode = DecodeConfig(max_new_tokens=5, **options)
  if head_layers is None:
    expected = 1
  else:
    expected = len(head_layers) + (decode.exit_mode == "deed") * len(head_layers - {1})
  assert _traced_heads(model, decode, encoder_inputs) == expected


@pytest.mark.parametrize(
  "exit_layers, message",
  [
    ((), "non-empty tuple"),
    ((2, True), "non-empty tuple"),
    ("2", "non-empty tuple"),
    ((0, 2), r"outside 1\.\.4"),
    ((5,), r"outside 1\.\.4"),
  ],
)
def test_bad_exit_layers_are_refused_before_compiling(exit_layers, message):
  model = spread_model("text", 0)
  with pytest.raises(ValueError, match=rf"allowed_exit_layers=.*{message}"):
    make_generate(model, DecodeConfig(max_new_tokens=5, allowed_exit_layers=exit_layers))


def test_the_old_exit_layers_keyword_points_to_allowed_exit_layers():
  with pytest.raises(ValueError, match=r"exit_layers=\(2, 3\).*now called allowed_exit_layers"):
    DecodeConfig(max_new_tokens=5, exit_layers=(2, 3))
  assert DecodeConfig(allowed_exit_layers=[3, 2]).allowed_exit_layers == (2, 3)


def test_the_classifier_confidence_needs_a_model_with_a_classifier():
  model = spread_model("text", 0)
  with pytest.raises(ValueError, match=r"confidence='classifier'.*exit_classifier='none'"):
    make_generate(model, DecodeConfig(max_new_tokens=5, confidence="classifier"))
