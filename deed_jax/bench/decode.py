r"""Decoding speed by exit mode: static, fixed k, deed and copy per confidence at several depths.

  python -m deed_jax.bench.decode [--decoder_layers 12 --vocab_size 32128 --batch_sizes 1,8
                                   --confidences max_prob,state,classifier --output DIR/decode.json]

A randomly initialised model with a linear exit classifier (speed does not depend on what the
weights learned; exit depth does, so the deed/copy thresholds are picked per run and confidence to
reach target mean exit depths on these inputs). Each variant is jitted and warmed up (its compile
time is recorded), then all variants are timed in turn, `--repeats` rounds, and the median is
reported; speedups are medians of per-round ratios to static (the machine is shared). Decoder time =
generate time - encoder time.

The bound of a variant counts work in decoder-layer units: h is the LM head's measured cost (head +
log-softmax over the vocabulary, one position) relative to one decoder layer at one position. Static
costs L + h per token; a variant exiting at mean depth e that evaluates the head `heads` times per
token costs e + h * heads: once for head-free confidences and fixed exits, at every layer it may exit
at up to its exit for head confidences (max_prob: e (1 + h) when every layer may exit). The bound
(L + h) / (e + h * heads) also assumes a backfill block of m positions costs about one position
(decoding bound by reading the weights); the block-cost table measures that on the machine at hand,
and at batch 1 each deed row also gets the bound with blocks at their measured cost: DEED's schedule
replayed from the layers run per step (`layer_units`).

Goals checked at batch 1: fixed k / static within 15% of (k + h) / (L + h); deed with
`min_exit_layer=M, threshold=0` (every token exits at M) within 15% of fixed k=M, per confidence; and
deed's speedup >= 85% of its bound.

XLA's optimisation level changes both compile time and speed: the JSON records `XLA_FLAGS`, so a run
with the default flags (what users get) and one with e.g. `--xla_backend_optimization_level=0` (the
test suite's fast-compile setting) can be compared side by side.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import flags

from deed_jax import cli
from deed_jax.bench.costs import block_costs, head_cost
from deed_jax.bench.depth import threshold_for_depth
from deed_jax.bench.model import ModelFlags, inputs_for
from deed_jax.bench.report import write_result
from deed_jax.decoding.confidence import CONFIDENCES, needs_head
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import block_widths
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.errors import UserError
from deed_jax.models import ModelConfig, MultiExitEncoderDecoder
from deed_jax.timing import timed

_MODEL = ModelFlags()
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens decoded per sample.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_DEPTHS = flags.DEFINE_list(
  "target_depths",
  ["3", "6", "9"],
  "Mean exit depths the deed/copy thresholds are tuned to (batch 1).",
)
_CHUNK = flags.DEFINE_integer("backfill_chunk", 16, "DecodeConfig.backfill_chunk for deed.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds over all variants.")
_FIXED = flags.DEFINE_list("fixed_layers", [], "Fixed exit layers to time (default 1..L).")
_CONFIDENCES = flags.DEFINE_list(
  "confidences", ["max_prob", "state", "classifier"], "Confidences of the deed/copy variants."
)
_MIN_EXIT = flags.DEFINE_integer(
  "min_exit_check",
  4,
  "Time deed with min_exit_layer=M and "
  "threshold 0 (every token exits at M) against fixed k=M; 0: skip.",
)
_OUTPUT = flags.DEFINE_string("output", "bench_results/decode.json", "Where the JSON goes.")


class Variant(NamedTuple):
  name: str
  decode: DecodeConfig
  threshold: float | None


def variants_for(
  layers: int,
  thresholds: dict[str, dict[str, float]],
  fixed_layers: list[int],
  min_exit: int,
  chunk: int,
  max_new_tokens: int,
) -> list[Variant]:
  """static; fixed k; per confidence: deed with min_exit_layer=min_exit at threshold 0, deed and copy
  at the threshold tuned to each target depth ({depth: threshold})."""
  base = DecodeConfig(max_new_tokens=max_new_tokens, backfill_chunk=chunk)
  out = [Variant("static", dataclasses.replace(base, exit_mode="static"), None)]
  out += [
    Variant(f"fixed k={k}", dataclasses.replace(base, exit_mode="fixed", fixed_exit_layer=k), None)
    for k in fixed_layers
  ]
  for confidence, values in thresholds.items():
    decode = dataclasses.replace(base, confidence=confidence)
    if min_exit:
      out.append(
        Variant(
          f"deed {confidence} min={min_exit} tau=0",
          dataclasses.replace(decode, min_exit_layer=min_exit),
          0.0,
        )
      )
    for mode in ("deed", "copy"):
      out += [
        Variant(f"{mode} {confidence} e~{depth}", dataclasses.replace(decode, exit_mode=mode), t)
        for depth, t in values.items()
      ]
  return out


def heads_per_token(decode: DecodeConfig, exit_layers: np.ndarray, layers: int) -> float:
  """Mean LM-head evaluations per emitted token [B, N] (0: not emitted): once for head-free
  confidences and fixed exits, else one per layer that may exit, up to the token's exit."""
  exits = exit_layers[exit_layers > 0]
  if decode.exit_mode in ("static", "fixed") or not needs_head(decode.confidence):
    return 1.0
  allowed = np.cumsum(np.asarray(decode.early_exits(layers)[:-1] + (True,), np.float64))  # [L]
  return float(allowed[exits - 1].mean())


def layer_units(layers_run: np.ndarray, chunk: int, block_cost: dict[int, float] | None) -> float:
  """Decoder work of a decode in one-position layer calls, replaying DEED's schedule from the layers
  run per step ([N], batch-wide; 0 once done): at step p every layer j run first computes its
  deferred positions [n_j, p) (whole chunks, then the smallest width that holds the rest), then p.
  A block of m positions costs `block_cost[m]` one-position calls (measured; None: 1, the
  weight-streaming assumption of the plain bound)."""
  cost = (lambda m: 1.0) if block_cost is None else block_cost.__getitem__
  widths = block_widths(chunk)
  fill = np.zeros(int(layers_run.max(initial=0)), np.int64)
  units = 0.0
  for p, run in enumerate(int(r) for r in layers_run):
    for j in range(run):
      deferred = p - fill[j]
      units += (deferred // chunk) * cost(chunk) + 1.0
      if deferred % chunk:
        units += cost(min(w for w in widths if w >= deferred % chunk))
      fill[j] = p + 1
  return units


def bench_batch(
  model: MultiExitEncoderDecoder,
  batch: int,
  variants: list[Variant],
  repeats: int,
  head: float,
  block_cost: dict[int, float] | None = None,
) -> list[dict]:
  """One row per variant, timed round-robin."""
  outputs, seconds, first_seconds, encoder_seconds = _time_variants(model, batch, variants, repeats)
  decoder_seconds = np.maximum(seconds - encoder_seconds, 1e-9)  # [variants, repeats]
  rows = []
  for i, variant in enumerate(variants):
    row = _row(variant, outputs[i], seconds[i], decoder_seconds[i], batch, model.config, head)
    row["compile_s"] = max(first_seconds[i] - float(np.median(seconds[i])), 0.0)
    # Paired with static's time in the same round, so slow spells of the machine cancel out.
    row["speedup"] = float(np.median(decoder_seconds[0] / decoder_seconds[i]))
    row["speedup_over_bound"] = row["speedup"] / row["bound"]
    decode = variant.decode
    if block_cost is not None and decode.exit_mode == "deed":
      # The bound with backfill blocks at their measured cost on this machine (batch 1's costs).
      steps, tokens = np.asarray(outputs[i].layers_run), row["tokens_per_sample"] * batch
      units = layer_units(steps, min(decode.backfill_chunk, decode.max_new_tokens), block_cost)
      layers = model.config.decoder_layers
      row["bound_with_block_costs"] = (layers + head) / (
        units / max(tokens, 1) + head * row["heads_per_token"]
      )
      row["speedup_over_block_bound"] = row["speedup"] / row["bound_with_block_costs"]
    rows.append(row)
  return rows


def _time_variants(
  model: MultiExitEncoderDecoder, batch: int, variants: list[Variant], repeats: int
) -> tuple[list, np.ndarray, list[float], np.ndarray]:
  """Each variant compiled and warmed up, one at a time (the first call's time is kept), then all
  timed in turn, `repeats` rounds, beside the encoder alone. -> (each variant's output, seconds
  [variants, repeats], first-call seconds, encoder seconds [repeats])."""
  encoder_inputs = inputs_for(model.config, batch)
  encode = make_encode(model)
  runs, outputs, first_seconds = [], [], []
  for variant in variants:
    run = make_generate(model, variant.decode)
    start = time.perf_counter()
    outputs.append(jax.block_until_ready(run(encoder_inputs, variant.threshold)))
    first_seconds.append(time.perf_counter() - start)
    print(
      f"batch {batch}: {variant.name} compiled and run in {first_seconds[-1]:.1f} s", flush=True
    )
    runs.append(run)
  timed(encode, encoder_inputs)
  seconds = [[] for _ in variants]
  encoder_seconds = []
  for _ in range(repeats):
    encoder_seconds.append(timed(encode, encoder_inputs)[1])
    for i, (run, variant) in enumerate(zip(runs, variants)):
      seconds[i].append(timed(run, encoder_inputs, variant.threshold)[1])
  return outputs, np.asarray(seconds), first_seconds, np.asarray(encoder_seconds)


def _row(
  variant: Variant,
  out,
  times: np.ndarray,
  decoder: np.ndarray,
  batch: int,
  config: ModelConfig,
  head: float,
) -> dict:
  """A variant's timings (`times`, `decoder` [repeats] seconds) and exits, and its bound."""
  decode, layers = variant.decode, config.decoder_layers
  exit_layers = np.asarray(out.exit_layers)  # [B, N]
  tokens = int((exit_layers > 0).sum())
  steps = np.asarray(out.layers_run)
  decoder_ms = 1000 * float(np.median(decoder))
  depth = float(exit_layers[exit_layers > 0].mean())
  heads = heads_per_token(decode, exit_layers, layers)
  return {
    "variant": variant.name,
    "exit_mode": decode.exit_mode,
    "batch": batch,
    "confidence": None if decode.exit_mode in ("static", "fixed") else decode.confidence,
    "threshold": variant.threshold,
    "fixed_exit_layer": decode.fixed_exit_layer,
    "min_exit_layer": decode.min_exit_layer,
    "total_ms_per_sample": 1000 * float(np.median(times)) / batch,
    "decoder_ms_per_sample": decoder_ms / batch,
    "decoder_ms_per_token": decoder_ms / max(tokens, 1),
    "tokens_per_sample": tokens / batch,
    "mean_exit_layer": depth,
    "mean_layers_run_per_step": float(steps[steps > 0].mean()),
    "heads_per_token": heads,
    "backfilled_positions": int(np.asarray(out.backfilled).sum()),
    "bound": (layers + head) / (depth + head * heads),
    "repeats_ms": [1000 * t for t in times],
  }


def goals(rows: list[dict], layers: int, head: float) -> list[dict]:
  """The speed goals at batch 1 (see the module docstring)."""
  out = []
  by_name = {row["variant"]: row for row in rows if row["batch"] == 1}
  for row in by_name.values():
    if row["exit_mode"] == "fixed":
      k = row["fixed_exit_layer"]
      target = 1.15 * (k + head) / (layers + head)
      ratio = 1 / row["speedup"]
      out.append(
        {
          "variant": row["variant"],
          "measured": ratio,
          "target": f"<= {target:.3f}",
          "met": ratio <= target,
        }
      )
    elif row["exit_mode"] == "deed" and row["threshold"] == 0.0 and row["min_exit_layer"] > 1:
      fixed = by_name.get(f"fixed k={row['min_exit_layer']}")
      if fixed is not None:
        ratio = row["decoder_ms_per_token"] / fixed["decoder_ms_per_token"]
        out.append(
          {
            "variant": row["variant"],
            "measured": ratio,
            "target": f"<= 1.15 x {fixed['variant']}",
            "met": ratio <= 1.15,
          }
        )
    elif row["exit_mode"] == "deed":
      out.append(
        {
          "variant": row["variant"],
          "measured": row["speedup_over_bound"],
          "target": ">= 0.85",
          "met": row["speedup_over_bound"] >= 0.85,
          "of_bound_with_block_costs": row.get("speedup_over_block_bound"),
        }
      )
  return out


def table(rows: list[dict]) -> str:
  header = (
    f"{'batch':>5} {'variant':<28} {'tau':>9} {'exit':>5} {'run/step':>8} {'heads':>5} "
    f"{'dec ms/tok':>10} {'tot ms/smp':>10} {'compile s':>9} {'speedup':>7} {'bound':>6} "
    f"{'sp/bound':>8}"
  )
  lines = [header, "-" * len(header)]
  for r in rows:
    tau = "-" if r["threshold"] is None else f"{r['threshold']:.3g}"
    lines.append(
      f"{r['batch']:>5} {r['variant']:<28} {tau:>9} {r['mean_exit_layer']:>5.2f} "
      f"{r['mean_layers_run_per_step']:>8.2f} {r['heads_per_token']:>5.2f} "
      f"{r['decoder_ms_per_token']:>10.3f} {r['total_ms_per_sample']:>10.2f} "
      f"{r['compile_s']:>9.2f} {r['speedup']:>7.2f} {r['bound']:>6.2f} "
      f"{r['speedup_over_bound']:>8.2f}"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  layers = _MODEL.shape.layers
  fixed_layers, min_exit = _checked_layers(layers)
  model = _MODEL.model(_NEW_TOKENS.value)
  costs = block_costs(model, block_widths(_CHUNK.value), _REPEATS.value)
  head = head_cost(model, costs[0]["ms_per_block"] / layers, _REPEATS.value)
  print(
    f"head {head['in_layers']:.2f} layers; blocks relative to one position: "
    + ", ".join(f"m={c['positions']}: {c['relative_to_one']:.2f}" for c in costs),
    flush=True,
  )
  thresholds = {}
  for confidence in _CONFIDENCES.value:
    oracle = make_generate(
      model,
      DecodeConfig(exit_mode="oracle", confidence=confidence, max_new_tokens=_NEW_TOKENS.value),
    )
    thresholds[confidence] = {
      d: threshold_for_depth(oracle, inputs_for(model.config, 1), float(d)) for d in _DEPTHS.value
    }
  variants = variants_for(
    layers, thresholds, fixed_layers, min_exit, _CHUNK.value, _NEW_TOKENS.value
  )
  rows = []
  block_cost = {c["positions"]: c["relative_to_one"] for c in costs}
  for batch in (int(b) for b in _BATCHES.value):
    rows += bench_batch(
      model, batch, variants, _REPEATS.value, head["in_layers"], block_cost if batch == 1 else None
    )
  checked = goals(rows, layers, head["in_layers"])
  _print_summary(rows, model.config.vocab_size, head, costs, checked)
  write_result(
    _OUTPUT.value,
    {
      "model": json.loads(model.config.to_json()),
      "max_new_tokens": _NEW_TOKENS.value,
      "backfill_chunk": _CHUNK.value,
      "repeats": _REPEATS.value,
      "thresholds": thresholds,
      "head_cost": head,
      "rows": rows,
      "goals": checked,
      "block_costs": costs,
    },
  )


def _checked_layers(layers: int) -> tuple[list[int], int]:
  """-> (the fixed exits to time, with min_exit among them; min_exit, 0 when past the stack);
  refuses layers outside 1..L and unknown confidences."""
  fixed_layers = [int(k) for k in _FIXED.value] or list(range(1, layers + 1))
  for k in fixed_layers:
    if not 1 <= k <= layers:
      raise UserError(f"--fixed_layers has {k}, outside 1..{layers}.")
  for confidence in _CONFIDENCES.value:
    if confidence not in CONFIDENCES:
      raise UserError(f"--confidences has {confidence!r}, not one of {CONFIDENCES}.")
  min_exit = _MIN_EXIT.value if _MIN_EXIT.value <= layers else 0
  if min_exit and min_exit not in fixed_layers:
    fixed_layers = sorted(fixed_layers + [min_exit])
  return fixed_layers, min_exit


def _print_summary(
  rows: list[dict], vocab_size: int, head: dict, costs: list[dict], checked: list[dict]
) -> None:
  print(table(rows))
  print(
    f"\nThe LM head (V={vocab_size}, one position): {head['ms']:.3f} ms = "
    f"{head['in_layers']:.2f} decoder layers (one layer, one position: {head['layer_ms']:.3f} ms)"
  )
  print("A block of m positions through all decoder layers (batch 1), relative to one position:")
  print("  " + "  ".join(f"m={c['positions']}: {c['relative_to_one']:.2f}" for c in costs))
  print("\nGoals (batch 1):")
  for goal in checked:
    blocks = goal.get("of_bound_with_block_costs")
    print(
      f"  {goal['variant']:<28} {goal['measured']:.3f} (target {goal['target']}): "
      f"{'met' if goal['met'] else 'NOT met'}"
      + ("" if blocks is None else f"; {blocks:.3f} of the bound with measured block costs")
    )


if __name__ == "__main__":
  cli.run(main)
