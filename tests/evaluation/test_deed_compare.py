"""The full-depth vs DEED comparison that ./launch/local.sh prints."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from deed_jax.decoding.reference import greedy_at_exit
from deed_jax.evaluation import metrics
from deed_jax.evaluation.deed_compare import compare_decoding
from deed_jax.evaluation.report import decoding_table
from deed_jax.models import MultiExitEncoderDecoder
from tests.conftest import random_inputs, randomize, tiny_config


def _model_and_examples(seed: int):
  """A random 3-exit model and 4 single-example batches whose targets are the full model's own greedy
  output (so full depth scores 100% by construction). -> model, encoder inputs, targets [4, 6], examples."""
  config = tiny_config(decoder_layers=3, vocab_size=11)
  model = randomize(MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0)), seed=seed, scale=0.5)
  encoder_inputs, _ = random_inputs(config, batch=4)
  tokens = np.asarray(greedy_at_exit(model, encoder_inputs, 3, 6))
  examples = [{**{k: v[b:b + 1] for k, v in encoder_inputs.items()}, "targets": tokens[b:b + 1],
               "target_mask": (tokens[b:b + 1] != config.pad_id).astype(np.int32)} for b in range(4)]
  return model, encoder_inputs, tokens, examples


def test_compare_decoding_rows():
  model, _, _, examples = _model_and_examples(seed=0)
  rows = compare_decoding(model, examples, thresholds=[0.0, 1.5], max_new_tokens=6)
  assert [r["decoding"] for r in rows] == ["full depth", "DEED tau=0", "DEED tau=1.5"]
  full, always_first, never = rows
  assert full["exact_match"] == 1.0 and full["mean_exit_layer"] == 3.0
  assert always_first["mean_exit_layer"] == 1.0  # tau = 0: every token from the first exit.
  assert never["exact_match"] == 1.0 and never["mean_exit_layer"] == 3.0
  assert all(r["decoder_ms_per_sample"] > 0 for r in rows) and full["decoder_speedup"] == 1.0
  assert "DEED tau=1.5" in decoding_table(rows)


def test_compare_decoding_scores_the_task_metric_on_strings():
  model, encoder_inputs, tokens, examples = _model_and_examples(seed=1)
  config = model.config

  def decode_text(ids) -> str:  # ids -> letters, stopping at EOS, skipping pad and BOS
    out = []
    for i in (int(i) for i in ids):
      if i == config.eos_id:
        break
      if i not in (config.pad_id, config.bos_id):
        out.append("abcdefghijk"[i])
    return "".join(out)

  rows = compare_decoding(model, examples, [0.0], 6, metric="cer", decode_text=decode_text)
  full, first = rows
  assert full["metric_name"] == "cer" and full["metric"] == 0.0  # the targets are full depth's output
  # tau = 0: every token from exit 1, i.e. greedy decoding of the exit-1 model (the naive reference).
  at_first = np.asarray(greedy_at_exit(model, encoder_inputs, 1, 6))
  expected = [metrics.cer(decode_text(at_first[b]), decode_text(tokens[b])) for b in range(4)]
  assert first["metric"] == pytest.approx(100 * np.mean(expected))
  assert "cer" in decoding_table(rows)
