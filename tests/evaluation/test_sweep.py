"""Decoding one split under several settings: the rows the evaluator and the comparison after training
print, checked against the naive reference decoder."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from deed_jax.data import pipeline
from deed_jax.decoding.reference import greedy_at_exit
from deed_jax.errors import UserError
from deed_jax.evaluation import metrics
from deed_jax.evaluation.evaluator import parse_speculative
from deed_jax.evaluation.report import settings_table
from deed_jax.evaluation.sweep import (
  Setting,
  decode_settings,
  exit_histogram,
  per_example_scores,
  setting_grid,
  summarise,
)
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config

LETTERS = "abcdefghijk"


def _model_and_examples(seed: int, count: int = 5):
  """A random 3-exit model and `count` examples whose targets are the full model's own greedy output
  (so static decoding scores 100% by construction). -> model, encoder inputs, targets [count, 6],
  examples (dicts without a batch axis)."""
  config = tiny_config(decoder_layers=3, vocab_size=11)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=seed, scale=0.5)
  encoder_inputs, _ = random_inputs(config, batch=count)
  tokens = np.asarray(greedy_at_exit(model, encoder_inputs, 3, 6))
  examples = [
    {
      **{k: v[b] for k, v in encoder_inputs.items()},
      "targets": tokens[b],
      "target_mask": (tokens[b] != config.pad_id).astype(np.int32),
    }
    for b in range(count)
  ]
  return model, encoder_inputs, tokens, examples


def _batches(examples, size):
  return [pipeline.stack_examples(examples[i : i + size]) for i in range(0, len(examples), size)]


def _decode_text(config):
  def decode_text(ids) -> str:  # ids -> letters, stopping at EOS, skipping pad and BOS
    out = []
    for i in (int(i) for i in ids):
      if i == config.eos_id:
        break
      if i not in (config.pad_id, config.bos_id):
        out.append(LETTERS[i])
    return "".join(out)

  return decode_text


def test_setting_grid():
  grid = setting_grid(4, [0.5, 0.9])
  assert [s.name for s in grid] == [
    "static",
    "fixed exit 1",
    "fixed exit 2",
    "fixed exit 3",
    "copy tau=0.5",
    "copy tau=0.9",
    "deed tau=0.5",
    "deed tau=0.9",
  ]
  assert [s.name for s in setting_grid(2, [0.5], modes=("static", "deed"))] == [
    "static",
    "deed tau=0.5",
  ]
  speculative = setting_grid(4, [0.5], modes=("static",), speculative=[(2, 3)])
  assert [s.name for s in speculative] == ["static", "speculative d=2 k=3"]
  assert speculative[1].decode_config(8, "max_prob").draft_exit_layer == 2


@pytest.mark.parametrize("value", ["3", "3:x", "1:2:3", "-1:2"])
def test_bad_speculative_options_are_refused(value):
  with pytest.raises(UserError, match="draft_exit_layer:max_draft"):
    parse_speculative([value])
  assert parse_speculative(["3:4", "2:1"]) == ((3, 4), (2, 1))


@pytest.mark.parametrize("batch_size", [1, 2])  # 2: five examples, so the last batch is padded
def test_rows_against_the_naive_reference(batch_size):
  model, encoder_inputs, tokens, examples = _model_and_examples(seed=0)
  settings = [
    Setting("static"),
    Setting("fixed", fixed_exit_layer=1),
    Setting("deed", threshold=0.0),
    Setting("deed", threshold=1.5),
    Setting("copy", threshold=1.5),
    Setting("speculative", threshold=0.0, draft_exit_layer=1, max_draft=2),
  ]
  seen = []
  runs = decode_settings(model, _batches(examples, batch_size), settings, 6, progress=seen.append)
  assert sum(seen) == 5 * len(settings)
  at_first = np.asarray(greedy_at_exit(model, encoder_inputs, 1, 6))
  static, fixed1, deed0, deed_never, copy_never, speculative = runs
  np.testing.assert_array_equal(np.stack(static.tokens), tokens)
  np.testing.assert_array_equal(np.stack(speculative.tokens), tokens)  # lossless
  np.testing.assert_array_equal(np.stack(fixed1.tokens), at_first)  # fixed exit 1 is exit 1's model
  np.testing.assert_array_equal(np.stack(deed0.tokens), at_first)  # tau 0: every token from exit 1
  np.testing.assert_array_equal(np.stack(deed_never.tokens), tokens)
  np.testing.assert_array_equal(np.stack(copy_never.tokens), tokens)
  rows = summarise(runs)
  assert [r["setting"] for r in rows] == [
    "static",
    "fixed exit 1",
    "deed tau=0",
    "deed tau=1.5",
    "copy tau=1.5",
    "speculative d=1 k=2",
  ]
  # Drafts are exit 1's tokens: those the full model agrees with are the accepted ones.
  drafted, matched = np.asarray(speculative.speculation)[:, 1:].sum(0)
  assert 0 < drafted and rows[5]["draft_acceptance"] == pytest.approx(matched / drafted)
  assert 0.0 < rows[5]["tokens_per_round"] <= 3.0 and "draft_acceptance" not in rows[0]
  expected_first = 100 * np.mean([np.array_equal(at_first[b], tokens[b]) for b in range(5)])
  assert rows[0]["metric"] == 100.0 and rows[0]["mean_exit_layer"] == 3.0
  assert rows[1]["metric"] == pytest.approx(expected_first) == rows[2]["metric"]
  assert rows[1]["mean_exit_layer"] == 1.0 == rows[2]["mean_exit_layer"]
  assert rows[3]["mean_exit_layer"] == 3.0
  for row in rows:
    assert row["batch_size"] == batch_size and row["num_examples"] == 5
    assert (
      row["decoder_ms_per_sample"] > 0
      and row["total_ms_per_sample"] >= row["decoder_ms_per_sample"]
    )
  assert rows[0]["decoder_speedup"] == 1.0
  assert (
    rows[2]["threshold"] == 0.0
    and rows[1]["fixed_exit_layer"] == 1
    and rows[0]["threshold"] is None
  )
  # Every emitted token is counted once, at the layer it exited from.
  emitted = int(sum((t != model.config.pad_id).sum() for t in static.tokens))
  assert exit_histogram(deed0, 3) == [
    emitted_first := int(sum((e > 0).sum() for e in deed0.exit_layers)),
    0,
    0,
  ]
  assert exit_histogram(static, 3) == [0, 0, emitted] and emitted_first > 0
  table = settings_table(rows)
  assert "deed tau=1.5" in table and "decoder ms/sample" in table and "tokens/round" in table


def test_untimed_runs_and_the_task_metric_on_strings():
  model, encoder_inputs, tokens, examples = _model_and_examples(seed=1, count=4)
  decode_text = _decode_text(model.config)
  answers = [[decode_text(t)] for t in tokens]
  runs = decode_settings(
    model,
    _batches(examples, 4),
    [Setting("static"), Setting("deed", threshold=0.0)],
    6,
    timing=False,
  )
  full, first = summarise(runs, "cer", decode_text, answers)
  assert (
    full["metric_name"] == "cer" and full["metric"] == 0.0
  )  # the targets are full depth's output
  assert "decoder_ms_per_sample" not in full and full["batch_size"] == 4
  at_first = np.asarray(greedy_at_exit(model, encoder_inputs, 1, 6))
  expected = [metrics.cer(decode_text(at_first[b]), decode_text(tokens[b])) for b in range(4)]
  assert first["metric"] == pytest.approx(100 * np.mean(expected))
  np.testing.assert_allclose(per_example_scores(runs[1], "cer", decode_text, answers), expected)
  assert "cer" in settings_table([full, first])
