"""Full-depth vs DEED decoding on a validation split: accuracy (and the task metric on decoded
strings), mean exit layer, decoder latency.

Examples are decoded one at a time (batch 1, where a step-level exit saves work). Decoder latency is
the median over examples of (generate time - encoder time), both jitted and measured after a warm-up.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.evaluation.metrics import corpus_score
from deed_jax.evaluation.per_exit import exact_match
from deed_jax.models import MultiExitEncoderDecoder, encoder_inputs
from deed_jax.timing import timed


def compare_decoding(model: MultiExitEncoderDecoder, examples: Iterable[dict], thresholds: Iterable[float],
                     max_new_tokens: int, metric: str = "exact_match",
                     decode_text: Callable[[Sequence[int]], str] | None = None) -> list[dict]:
  """One row for static decoding and one per DEED threshold, over single-example batches. Each row
  has the token-level `exact_match` (0..1) and, with `decode_text` (token ids -> string, stopping at
  EOS), the task `metric` on the decoded strings against the decoded targets (`metric`, 0..100)."""
  examples = list(examples)
  encode = make_encode(model)
  variants = [("full depth", DecodeConfig(exit_mode="static", max_new_tokens=max_new_tokens), None)]
  variants += [(f"DEED tau={t:g}", DecodeConfig(exit_mode="deed", max_new_tokens=max_new_tokens), t)
               for t in thresholds]
  rows = []
  for name, config, threshold in variants:
    run = make_generate(model, config)
    run(encoder_inputs(examples[0]), threshold)  # Compile.
    encode(encoder_inputs(examples[0]))
    matches, exit_layers, decoder_seconds, predictions, answers = [], [], [], [], []
    for example in examples:
      inputs = encoder_inputs(example)
      out, total = timed(run, inputs, threshold)
      _, encoder_time = timed(encode, inputs)
      decoder_seconds.append(max(total - encoder_time, 0.0))
      matches.append(bool(np.asarray(exact_match(out.tokens, example["targets"],
                                                 example["target_mask"]))[0]))
      layers = np.asarray(out.exit_layers)
      exit_layers.extend(layers[layers > 0].tolist())
      if decode_text is not None:
        predictions.append(decode_text(np.asarray(out.tokens)[0]))
        target = np.asarray(example["targets"])[0]
        answers.append(decode_text(target[np.asarray(example["target_mask"])[0] > 0]))
    rows.append({"decoding": name, "threshold": threshold, "exact_match": float(np.mean(matches)),
                 "mean_exit_layer": float(np.mean(exit_layers)),
                 "decoder_ms_per_sample": 1000 * float(np.median(decoder_seconds))})
    if decode_text is not None:
      rows[-1].update(metric_name=metric, metric=corpus_score(metric, predictions, answers))
  full = rows[0]["decoder_ms_per_sample"]
  for row in rows:
    row["decoder_speedup"] = full / max(row["decoder_ms_per_sample"], 1e-9)
  return rows
