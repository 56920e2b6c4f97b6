"""Beam search with early exit against an independent, straightforward beam search."""

from __future__ import annotations

import numpy as np
import pytest

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import generate, make_generate
from tests.conftest import random_inputs
from tests.decoding.beam_reference import beam_search
from tests.decoding.helpers import (
  assert_pools_equal,
  confidence_quantiles,
  frequent_token,
  replace,
  spread_model,
  spread_threshold,
)

NUM_BEAMS, STEPS = 3, 8


@pytest.mark.parametrize(
  "encoder, seed, length_penalty, early_stopping, eos",
  [
    ("text", 0, 1.0, False, "model"),
    ("image", 3, 0.6, False, "frequent"),
    ("text", 2, 2.0, True, "frequent"),
  ],
)
def test_full_depth_beam_equals_straightforward_beam_search(
  encoder, seed, length_penalty, early_stopping, eos
):
  model = spread_model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=3, seed=seed)
  eos_id = (
    frequent_token(model, encoder_inputs, STEPS) if eos == "frequent" else model.config.eos_id
  )
  decode = DecodeConfig(
    strategy="beam",
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    threshold=1.5,
    length_penalty=length_penalty,
    early_stopping=early_stopping,
    eos_id=eos_id,
  )
  pools = beam_search(
    model,
    encoder_inputs,
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    eos_id=eos_id,
    length_penalty=length_penalty,
    early_stopping=early_stopping,
  ).pools
  for mode in ("deed", "static"):
    assert_pools_equal(
      generate(model, encoder_inputs, replace(decode, exit_mode=mode)), pools, model.config.pad_id
    )
  lengths = [len(h[1]) for pool in pools for h in pool]
  if eos == "frequent":  # Hypotheses ended with EOS and went through the pool.
    assert min(lengths) < STEPS
  else:  # Rows ran to max_new_tokens and offered their live beams at the end.
    assert max(lengths) == STEPS


# Models and batches with several thresholds that meet the test's preconditions (`telling`).
@pytest.mark.parametrize(
  "encoder, seed, batch", [("image", 0, 3), pytest.param("text", 5, 4, marks=pytest.mark.slow)]
)
def test_early_exit_beam_equals_straightforward_beam_search(encoder, seed, batch):
  model = spread_model(encoder, seed)
  encoder_inputs, _ = random_inputs(model.config, batch=batch, seed=seed)
  eos_id = frequent_token(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    strategy="beam",
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    exit_mode="deed",
    length_penalty=0.8,
    eos_id=eos_id,
  )
  oracle = make_generate(model, replace(decode, exit_mode="oracle"))
  deed_run = make_generate(model, replace(decode, threshold=0.0))
  reference = lambda t: beam_search(
    model,
    encoder_inputs,
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    eos_id=eos_id,
    length_penalty=0.8,
    threshold=t,
  )

  def telling(threshold) -> bool:
    """The final hypotheses exit at >= 3 layers, the deed run backfills, and at some step a row is
    done while the running rows' beams all exit below the top layer (so a finished row could wrongly
    force depth)."""
    result = reference(threshold)
    exits = {e for pool in result.pools for h in pool for e in h[2]}
    done_beside_shallow = any(
      0 < depth < model.config.decoder_layers and min(result.row_steps) <= p
      for p, depth in enumerate(result.layers_run)
    )
    return (
      len(exits) >= 3
      and done_beside_shallow
      and int(np.asarray(deed_run(encoder_inputs, threshold).backfilled).sum()) > 0
    )

  threshold = spread_threshold(
    lambda t: oracle(encoder_inputs, t),
    confidence_quantiles(model, encoder_inputs, STEPS),
    require=telling,
  )
  pools, layers_run, _ = reference(threshold)
  assert len({e for pool in pools for h in pool for e in h[2]}) >= 3  # Exits at many layers.
  deed = deed_run(encoder_inputs, threshold)
  assert_pools_equal(deed, pools, model.config.pad_id)
  assert np.asarray(deed.backfilled).sum() > 0  # Beams, too, computed skipped layers later.
  # The batch rule: each step runs exactly as deep as the deepest exit among the beams of rows still
  # running; finished rows and shallower beams never force depth.
  assert np.asarray(deed.layers_run).tolist() == layers_run
  assert min(d for d in layers_run if d) < model.config.decoder_layers  # Some step stopped early.
  assert_pools_equal(oracle(encoder_inputs, float(threshold)), pools, model.config.pad_id)
  alone = generate(
    model,
    {k: v[1:2] for k, v in encoder_inputs.items()},
    replace(decode, threshold=float(threshold)),
  )
  np.testing.assert_array_equal(np.asarray(alone.beams.tokens)[0], np.asarray(deed.beams.tokens)[1])


def test_copy_mode_beam_equals_straightforward_copy_beam_search():
  """CALM's copy mode under beam search: each beam's skipped layers see K/V projected from its own
  exit states, which move with the beam when beams reorder."""
  model = spread_model("text", 0)
  encoder_inputs, _ = random_inputs(model.config, batch=2, seed=0)
  eos_id = frequent_token(model, encoder_inputs, STEPS)
  decode = DecodeConfig(
    strategy="beam",
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    exit_mode="copy",
    length_penalty=0.8,
    eos_id=eos_id,
  )
  run = make_generate(model, decode)
  threshold = spread_threshold(
    lambda t: run(encoder_inputs, t), confidence_quantiles(model, encoder_inputs, STEPS)
  )
  search = dict(
    num_beams=NUM_BEAMS,
    max_new_tokens=STEPS,
    eos_id=eos_id,
    length_penalty=0.8,
    threshold=threshold,
  )
  pools = beam_search(model, encoder_inputs, copy_states=True, **search).pools
  exits = {e for pool in pools for h in pool for e in h[2][:-1]}  # positions a later one attends to
  assert (
    len(exits) >= 2 and min(exits) < model.config.decoder_layers
  )  # Some K/V really were copied.
  assert_pools_equal(run(encoder_inputs, threshold), pools, model.config.pad_id)
  # Copied states are not the full model's: the same search with DEED's features scores otherwise.
  deed_pools = beam_search(model, encoder_inputs, **search).pools
  assert [h[0] for pool in deed_pools for h in pool] != pytest.approx(
    [h[0] for pool in pools for h in pool], rel=1e-4
  )
