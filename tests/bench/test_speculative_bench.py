"""bench.speculative's pieces: the in-program step costs it bounds with, and the row it computes from a
run's rounds (hand-worked)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from deed_jax.bench.costs import step_costs
from deed_jax.bench.speculative_rounds import speculative_row
from deed_jax.evaluation.sweep import Setting, SettingRun
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, tiny_config


def test_step_costs_build_and_time_every_piece():
  config = tiny_config(decoder_layers=4)
  model = MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))
  encoder_inputs, _ = random_inputs(config, batch=2, target_length=4)
  costs = step_costs(model, encoder_inputs, [(1, 2), (2, 3)], max_new_tokens=6, repeats=3, calls=16)
  # Every program compiles and runs (timings themselves are the machine's: not asserted).
  assert set(costs) == {"static", "draft 1", "draft 2", "verify 1:2", "verify 2:3"}
  assert all(isinstance(ms, float) and np.isfinite(ms) and ms >= 0 for ms in costs.values()), costs


def test_speculative_row_from_rounds_and_costs():
  """Two batches of 2 rows at d=2, k=3: 3 + 2 rounds, 7 + 4 drafts, 6 + 4 accepted; the rows emit
  8 + 5 + 6 + 3 = 22 tokens in 5 rounds x 2 rows. Decoder time 1 ms and 0.5 ms per sample."""
  setting = Setting("speculative", threshold=0.0, draft_exit_layer=2, max_draft=3)
  exits = [np.array([2] * n + [0] * (10 - n)) for n in (8, 5, 6, 3)]
  tokens = [np.arange(10) for _ in exits]
  run = SettingRun(
    setting,
    batch_size=2,
    tokens=tokens,
    exit_layers=exits,
    decoder_seconds=[1e-3, 0.5e-3],
    speculation=[(3, 7, 6), (2, 4, 4)],
  )
  # Static's rows end after 8, 5, 6 and 4 tokens: batches of 8 and 6 steps.
  static_exits = [np.array([10] * n + [0] * (10 - n)) for n in (8, 5, 6, 4)]
  static = SettingRun(
    Setting("static"), batch_size=2, tokens=tokens[:3] + [np.ones(10)], exit_layers=static_exits
  )
  costs = {"static": 0.2, "draft 2": 0.05, "verify 2:3": 0.4}
  row = speculative_row(run, static, costs)
  assert row["identical"] == 0.75  # the last example differs
  assert row["rounds"] == 5 and row["draft_acceptance"] == 10 / 11
  assert row["tokens_per_round"] == 22 / 10 and row["drafts_per_round"] == 11 / 10
  parts = 1.1 * 0.05 + 0.4
  np.testing.assert_allclose(row["round_parts_ms"], parts)
  # Measured: (1 ms + 0.5 ms) x 2 rows over 5 rounds.
  np.testing.assert_allclose(row["round_ms"], 0.6)
  np.testing.assert_allclose(row["round_overhead_ms"], 0.6 - parts)
  np.testing.assert_allclose(row["bound"], (8 + 6) * 0.2 / (5 * parts))
  np.testing.assert_allclose(row["bound_full_rounds"], 4 * 0.2 / (3 * 0.05 + 0.4))
