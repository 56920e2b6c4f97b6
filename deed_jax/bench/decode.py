r"""Decoding speed by exit mode: static, fixed k = 1..L, deed and copy at several thresholds.

  python -m deed_jax.bench.decode [--decoder_layers 12 --batch_sizes 1,8 --output DIR/decode.json]

A randomly initialised model (speed does not depend on what the weights learned; exit depth does, so
the deed/copy thresholds are picked per run to reach target mean exit depths on these inputs). Each
variant is jitted and warmed up, then all variants are timed in turn, `--repeats` rounds, and the
median is reported; speedups are medians of per-round ratios to static (the machine is shared).
Decoder time = generate time - encoder time. Goals checked (batch 1): fixed k / static within 15% of k / L, and deed's speedup
>= 85% of its bound L / mean exit depth.

The bound assumes a backfill block of m positions costs about one position (decoding is bound by
reading the weights). The block-cost table measures that assumption on the machine at hand: the
time of every decoder layer over a block of m positions, relative to one position.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from deed_jax.bench.depth import threshold_for_depth
from deed_jax.bench.report import write_result
from deed_jax.timing import timed
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.decode_step import block_widths
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.models import ModelConfig, MultiExitEncoderDecoder

_LAYERS = flags.DEFINE_integer("decoder_layers", 12, "Decoder layers (exits).")
_D_MODEL = flags.DEFINE_integer("d_model", 512, "Model width.")
_HEADS = flags.DEFINE_integer("num_heads", 8, "Attention heads.")
_D_FF = flags.DEFINE_integer("d_ff", 2048, "MLP width.")
_VOCAB = flags.DEFINE_integer("vocab_size", 259, "Vocabulary (259 = the byte tokenizer).")
_SOURCE = flags.DEFINE_integer("source_length", 64, "Encoder input length.")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens decoded per sample.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_DEPTHS = flags.DEFINE_list("target_depths", ["3", "6", "9"],
                            "Mean exit depths the deed/copy thresholds are tuned to (batch 1).")
_CHUNK = flags.DEFINE_integer("backfill_chunk", 16, "DecodeConfig.backfill_chunk for deed.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds over all variants.")
_FIXED = flags.DEFINE_list("fixed_layers", [], "Fixed exit layers to time (default 1..L).")
_OUTPUT = flags.DEFINE_string("output", "bench_results/decode.json", "Where the JSON goes.")


def bench_model(layers: int, d_model: int, heads: int, d_ff: int, vocab: int, source_length: int,
                max_new_tokens: int) -> MultiExitEncoderDecoder:
  """A pre-norm text encoder-decoder (2 encoder layers: the encoder is timed apart)."""
  config = ModelConfig(vocab_size=vocab, d_model=d_model, num_heads=heads, d_ff=d_ff, encoder_layers=2,
                       decoder_layers=layers, max_source_length=source_length,
                       max_target_length=max_new_tokens, adapter="linear")
  return MultiExitEncoderDecoder(config, rngs=nnx.Rngs(0))


def inputs_for(config: ModelConfig, batch: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, config.vocab_size, size=(batch, config.max_source_length)).astype(np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def bench_batch(model: MultiExitEncoderDecoder, batch: int, thresholds: list[float], repeats: int,
                fixed_layers: list[int], chunk: int, max_new_tokens: int) -> list[dict]:
  """One row per variant, timed round-robin."""
  config, layers = model.config, model.config.decoder_layers
  encoder_inputs = inputs_for(config, batch)
  encode = make_encode(model)
  base = DecodeConfig(max_new_tokens=max_new_tokens, backfill_chunk=chunk)
  variants = [("static", DecodeConfig(exit_mode="static", max_new_tokens=max_new_tokens), None)]
  variants += [(f"fixed k={k}", DecodeConfig(exit_mode="fixed", fixed_exit_layer=k,
                                             max_new_tokens=max_new_tokens), None) for k in fixed_layers]
  for mode in ("deed", "copy"):
    variants += [(f"{mode} tau={t:.4g}", dataclasses.replace(base, exit_mode=mode), t)
                 for t in thresholds]
  runs = [make_generate(model, decode) for _, decode, _ in variants]
  outputs = [run(encoder_inputs, t) for run, (_, _, t) in zip(runs, variants)]  # Compile, warm up.
  timed(encode, encoder_inputs)
  seconds = [[] for _ in variants]
  encoder_seconds = []
  for _ in range(repeats):
    encoder_seconds.append(timed(encode, encoder_inputs)[1])
    for i, (run, (_, _, threshold)) in enumerate(zip(runs, variants)):
      seconds[i].append(timed(run, encoder_inputs, threshold)[1])
  encoder_seconds = np.asarray(encoder_seconds)  # [repeats]
  decoder_seconds = np.maximum(np.asarray(seconds) - encoder_seconds, 1e-9)  # [variants, repeats]
  rows = []
  for (name, decode, threshold), out, times, decoder in zip(variants, outputs, seconds,
                                                           decoder_seconds):
    exit_layers = np.asarray(out.exit_layers)  # [B, N]
    tokens = int((exit_layers > 0).sum())
    steps = np.asarray(out.layers_run)
    decoder_ms = 1000 * float(np.median(decoder))
    rows.append({
        "variant": name, "exit_mode": decode.exit_mode, "batch": batch, "threshold": threshold,
        "fixed_exit_layer": decode.fixed_exit_layer,
        "total_ms_per_sample": 1000 * float(np.median(times)) / batch,
        "decoder_ms_per_sample": decoder_ms / batch,
        "decoder_ms_per_token": decoder_ms / max(tokens, 1),
        "tokens_per_sample": tokens / batch,
        "mean_exit_layer": float(exit_layers[exit_layers > 0].mean()),
        "mean_layers_run_per_step": float(steps[steps > 0].mean()),
        "backfilled_positions": int(np.asarray(out.backfilled).sum()),
        # Paired with static's time in the same round, so slow spells of the machine cancel out.
        "speedup": float(np.median(decoder_seconds[0] / decoder)),
        "repeats_ms": [1000 * t for t in times],
    })
  for row in rows:
    row["bound"] = layers / row["mean_exit_layer"]
    row["speedup_over_bound"] = row["speedup"] / row["bound"]
  return rows


def block_costs(model: MultiExitEncoderDecoder, widths: list[int], repeats: int,
                calls: int = 16) -> list[dict]:
  """Median time of the decoder's layers over one block of m positions (batch 1, written into the
  KV cache like a deed backfill), `calls` blocks per timing, relative to m = 1."""
  config = model.config
  graphdef, params = nnx.split(model, nnx.Param)
  encoded = make_encode(model)(inputs_for(config, 1))  # [1, S, D], [1, S]: not timed
  cache_length = max(widths) * calls

  def run_blocks(params, encoded, width: int):
    decoder = nnx.merge(graphdef, params).decoder
    memory = decoder.cross_memory(*encoded)
    caches = decoder.init_cache(1, cache_length)  # L x (k, v) [1, H, T, Dh]

    def block(i, carry):  # Every layer over positions [i * width, (i + 1) * width).
      x, caches = carry  # [1, W, D]
      caches = list(caches)
      for j in range(config.decoder_layers):
        x, caches[j] = decoder.run_block(j, x, i * width, caches[j], memory)
      return x, tuple(caches)

    x = jnp.ones((1, width, config.d_model), jnp.dtype(config.dtype))
    return jax.lax.fori_loop(0, calls, block, (x, caches))[0]

  runs = {w: jax.jit(run_blocks, static_argnums=2) for w in widths}
  for w, run in runs.items():
    timed(run, params, encoded, w)  # Compile, warm up.
  seconds = {w: [] for w in widths}
  for _ in range(repeats):
    for w, run in runs.items():
      seconds[w].append(timed(run, params, encoded, w)[1])
  one = np.asarray(seconds[widths[0]])
  return [{"positions": w, "ms_per_block": 1000 * float(np.median(seconds[w])) / calls,
           "relative_to_one": float(np.median(np.asarray(seconds[w]) / one))} for w in widths]


def goals(rows: list[dict], layers: int) -> list[dict]:
  """The speed goals at batch 1: fixed k time / static time within 15% of k / L; deed >= 85% of
  L / mean exit depth."""
  out = []
  for row in rows:
    if row["batch"] != 1:
      continue
    if row["exit_mode"] == "fixed":
      k = row["fixed_exit_layer"]
      ratio = 1 / row["speedup"]
      out.append({"variant": row["variant"], "measured": ratio, "target": f"<= {1.15 * k / layers:.3f}",
                  "met": ratio <= 1.15 * k / layers})
    elif row["exit_mode"] == "deed":
      out.append({"variant": row["variant"], "measured": row["speedup_over_bound"], "target": ">= 0.85",
                  "met": row["speedup_over_bound"] >= 0.85})
  return out


def table(rows: list[dict]) -> str:
  header = (f"{'batch':>5} {'variant':<16} {'exit':>5} {'run/step':>8} {'dec ms/tok':>10} "
            f"{'dec ms/smp':>10} {'tot ms/smp':>10} {'speedup':>8} {'bound':>6} {'sp/bound':>8}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r['batch']:>5} {r['variant']:<16} {r['mean_exit_layer']:>5.2f} "
                 f"{r['mean_layers_run_per_step']:>8.2f} {r['decoder_ms_per_token']:>10.3f} "
                 f"{r['decoder_ms_per_sample']:>10.2f} {r['total_ms_per_sample']:>10.2f} "
                 f"{r['speedup']:>8.2f} {r['bound']:>6.2f} {r['speedup_over_bound']:>8.2f}")
  return "\n".join(lines)


def main(argv):
  del argv
  layers = _LAYERS.value
  fixed_layers = [int(k) for k in _FIXED.value] or list(range(1, layers + 1))
  for k in fixed_layers:
    if not 1 <= k <= layers:
      raise ValueError(f"--fixed_layers has {k}, outside 1..{layers}.")
  model = bench_model(layers, _D_MODEL.value, _HEADS.value, _D_FF.value, _VOCAB.value,
                      _SOURCE.value, _NEW_TOKENS.value)
  oracle = make_generate(model, DecodeConfig(exit_mode="oracle", max_new_tokens=_NEW_TOKENS.value))
  thresholds = [threshold_for_depth(oracle, inputs_for(model.config, 1), float(d))
                for d in _DEPTHS.value]
  rows = []
  for batch in (int(b) for b in _BATCHES.value):
    rows += bench_batch(model, batch, thresholds, _REPEATS.value, fixed_layers, _CHUNK.value,
                        _NEW_TOKENS.value)
  checked = goals(rows, layers)
  costs = block_costs(model, block_widths(_CHUNK.value), _REPEATS.value)
  print(table(rows))
  print("\nA block of m positions through all decoder layers (batch 1), relative to one position:")
  print("  " + "  ".join(f"m={c['positions']}: {c['relative_to_one']:.2f}" for c in costs))
  print("\nGoals (batch 1):")
  for goal in checked:
    print(f"  {goal['variant']:<16} {goal['measured']:.3f} (target {goal['target']}): "
          f"{'met' if goal['met'] else 'NOT met'}")
  write_result(_OUTPUT.value, {
      "model": json.loads(model.config.to_json()),
      "max_new_tokens": _NEW_TOKENS.value, "backfill_chunk": _CHUNK.value, "repeats": _REPEATS.value,
      "thresholds": thresholds, "rows": rows, "goals": checked, "block_costs": costs})


if __name__ == "__main__":
  app.run(main)
