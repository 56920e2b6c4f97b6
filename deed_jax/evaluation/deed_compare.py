"""Full-depth vs DEED decoding on a validation split: accuracy (and the task metric on decoded
strings), mean exit layer, decoder latency.

Examples are decoded one at a time (batch 1, where a step-level exit saves work), every variant in
turn on each example. Decoder latency is the median over examples of (generate time - encoder time),
both jitted and measured after a warm-up; the speedup is the median of per-example ratios to full
depth.
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
  runs = [make_generate(model, config) for _, config, _ in variants]
  for run, (_, _, threshold) in zip(runs, variants):
    run(encoder_inputs(examples[0]), threshold)  # Compile.
  encode(encoder_inputs(examples[0]))
  # Per variant: exact matches, exit layers, decoder seconds per example, predicted strings.
  results = [([], [], [], []) for _ in variants]
  answers = []
  for example in examples:  # Variants in turn on each example, so slow spells of the machine hit all.
    inputs = encoder_inputs(example)
    _, encoder_time = timed(encode, inputs)
    if decode_text is not None:
      target = np.asarray(example["targets"])[0]
      answers.append(decode_text(target[np.asarray(example["target_mask"])[0] > 0]))
    for run, (_, _, threshold), (matches, exits, seconds, predictions) in zip(runs, variants, results):
      out, total = timed(run, inputs, threshold)
      seconds.append(max(total - encoder_time, 1e-9))
      matches.append(bool(np.asarray(exact_match(out.tokens, example["targets"],
                                                 example["target_mask"]))[0]))
      layers = np.asarray(out.exit_layers)
      exits.extend(layers[layers > 0].tolist())
      if decode_text is not None:
        predictions.append(decode_text(np.asarray(out.tokens)[0]))
  full_seconds = np.asarray(results[0][2])
  rows = []
  for (name, _, threshold), (matches, exits, seconds, predictions) in zip(variants, results):
    rows.append({"decoding": name, "threshold": threshold, "exact_match": float(np.mean(matches)),
                 "mean_exit_layer": float(np.mean(exits)),
                 "decoder_ms_per_sample": 1000 * float(np.median(seconds)),
                 # Paired per example with full depth's time, medianed.
                 "decoder_speedup": float(np.median(full_seconds / np.asarray(seconds)))})
    if decode_text is not None:
      rows[-1].update(metric_name=metric, metric=corpus_score(metric, predictions, answers))
  return rows
