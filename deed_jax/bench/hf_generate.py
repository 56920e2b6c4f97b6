r"""deed-jax decoding against Hugging Face PyTorch `generate` on the same converted model.

  python -m deed_jax.bench.hf_generate [--decoder_layers 6 --d_model 768 --torch_device cuda
                                        --output DIR/hf_generate.json]

A random BART (6 + 6 layers, d_model 768 by default) is saved by HF, converted with
`deed_jax.convert`, and decoded both ways: HF eager greedy and beam search (torch, KV cache, inference
mode) against our jitted static, DEED at threshold > 1 (full depth, through the DEED machinery) and DEED
at a threshold tuned to about half depth. Its EOS logit is pushed down so every variant emits exactly
`max_new_tokens` tokens. Full-depth variants must give HF's tokens (checked and reported). Variants are
timed round-robin, `--repeats` rounds; medians, and speedups as medians of per-round ratios to HF
greedy. Times are whole `generate` calls (encoder included) per sample. The summary line is our static
greedy against HF eager greedy at batch 1 (the smallest batch run), and our static decoder time per
token (encoder time taken off) against the weight-streaming floor: the bytes a batch-1 token reads
over the measured memory bandwidth (`deed_jax.bench.bandwidth`); the goal is at most 1.1x the floor.

PyTorch runs on `--torch_device` (by default CUDA when torch sees a GPU, else the CPU) and JAX on its
default backend: on a GPU machine both run on the GPU. The JSON records both devices.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
from absl import flags, logging

from deed_jax import checkpoint, cli
from deed_jax.bench.bandwidth import memory_bandwidth, static_bytes_per_token
from deed_jax.bench.depth import threshold_for_depth
from deed_jax.bench.model import ModelFlags
from deed_jax.bench.report import write_result
from deed_jax.convert import hf_to_orbax
from deed_jax.convert.parity import hf_generate, pad_to
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.timing import median_seconds, timed

_MODEL = ModelFlags(
  decoder_layers=6, d_model=768, num_heads=12, d_ff=3072, vocab_size=8192, source_length=32
)
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 32, "Tokens decoded per sample.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams of the beam-search variants (0: none).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds over all variants.")
_TORCH_DEVICE = flags.DEFINE_string(
  "torch_device", None, "Device of the PyTorch model (default: cuda when available, else cpu)."
)
_OUTPUT = flags.DEFINE_string("output", "bench_results/hf_generate.json", "Where the JSON goes.")


def build_hf_model(
  directory: str, layers: int, d_model: int, heads: int, d_ff: int, vocab: int, max_length: int
):
  """A random BART saved to `directory`, with EOS made unreachable (fixed-length outputs)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  config = transformers.BartConfig(
    vocab_size=vocab,
    d_model=d_model,
    encoder_layers=layers,
    decoder_layers=layers,
    encoder_attention_heads=heads,
    decoder_attention_heads=heads,
    encoder_ffn_dim=d_ff,
    decoder_ffn_dim=d_ff,
    max_position_embeddings=max_length,
    forced_eos_token_id=None,
  )
  model = transformers.BartForConditionalGeneration(config).eval()
  with torch.no_grad():
    model.final_logits_bias[0, config.eos_token_id] = -1e4
  model.save_pretrained(directory)
  return model


def _time_hf(hf_model, inputs, new_tokens, config, search) -> tuple[np.ndarray, float]:
  start = time.perf_counter()
  tokens, _ = hf_generate(
    hf_model, inputs, new_tokens, eos_id=config.eos_id, pad_id=config.pad_id, **search
  )
  return tokens, time.perf_counter() - start


def bench_batch(
  hf_model,
  model,
  batch: int,
  threshold: float,
  beams: int,
  repeats: int,
  new_tokens: int,
  torch_device: str,
) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top

  config = model.config
  rng = np.random.default_rng(batch)
  ids = rng.integers(3, config.vocab_size, size=(batch, _MODEL.shape.source_length)).astype(
    np.int64
  )
  ours_inputs = {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32)}
  hf_inputs = {
    k: torch.from_numpy(v.astype(np.int64)).to(torch_device) for k, v in ours_inputs.items()
  }
  variants = _variants(model, threshold, beams, new_tokens)

  def run(kind, runner):
    if kind == "hf":
      return _time_hf(hf_model, hf_inputs, new_tokens, config, runner)
    out, seconds = timed(runner[0], ours_inputs, runner[1])
    return np.asarray(out.tokens), seconds

  outputs = {name: run(kind, runner)[0] for name, kind, runner, _ in variants}  # compile, warm up
  seconds = {name: [] for name, *_ in variants}
  for _ in range(repeats):
    for name, kind, runner, _ in variants:
      seconds[name].append(run(kind, runner)[1])
  base = np.asarray(seconds["hf greedy (torch eager)"])
  rows = []
  for name, kind, runner, reference in variants:
    tokens = outputs[name]
    row = {
      "variant": name,
      "batch": batch,
      "ms_per_sample": 1000 * float(np.median(seconds[name])) / batch,
      "ms_per_token": 1000 * float(np.median(seconds[name])) / (batch * new_tokens),
      "speedup_vs_hf_greedy": float(np.median(base / np.asarray(seconds[name]))),
      "repeats_ms": [1000 * s for s in seconds[name]],
    }
    if reference is not None:
      expected = pad_to(outputs[reference], new_tokens, config.pad_id)
      row["same_tokens_as"] = reference
      row["token_agreement"] = float((tokens == expected).mean())
    if kind == "ours" and "deed" in name:
      out = runner[0](ours_inputs, runner[1])
      exits = np.asarray(out.exit_layers)
      row["mean_exit_layer"] = float(exits[exits > 0].mean())
      row["threshold"] = runner[1]
    rows.append(row)
  return rows


def _variants(model, threshold: float, beams: int, new_tokens: int) -> list[tuple]:
  """(name, kind, runner, reference name for token checks) per variant: HF's greedy (and beam)
  generate, ours static, DEED never exiting early (tau > 1) and at `threshold` (and beam static)."""
  variants = [("hf greedy (torch eager)", "hf", dict(num_beams=1), None)]
  ours = [
    ("ours static", DecodeConfig(exit_mode="static", max_new_tokens=new_tokens), 2.0),
    ("ours deed tau>1", DecodeConfig(max_new_tokens=new_tokens), 1.5),
    (f"ours deed tau={threshold:.3g}", DecodeConfig(max_new_tokens=new_tokens), threshold),
  ]
  variants += [
    (name, "ours", (make_generate(model, decode), t), "hf greedy (torch eager)")
    for name, decode, t in ours
  ]
  if beams:
    variants.append((f"hf beam {beams}", "hf", dict(num_beams=beams), None))
    beam = DecodeConfig(
      strategy="beam", num_beams=beams, exit_mode="static", max_new_tokens=new_tokens
    )
    variants.append(
      (f"ours beam {beams} static", "ours", (make_generate(model, beam), 2.0), f"hf beam {beams}")
    )

  return variants


def table(rows: list[dict]) -> str:
  header = (
    f"{'batch':>5} {'variant':<26} {'ms/sample':>10} {'ms/token':>9} {'vs HF greedy':>12} "
    f"{'exit':>5} {'tokens = reference':>18}"
  )
  lines = [header, "-" * len(header)]
  for r in rows:
    agreement = f"{r['token_agreement']:.3f}" if "token_agreement" in r else "-"
    exit_layer = f"{r['mean_exit_layer']:.2f}" if "mean_exit_layer" in r else "-"
    lines.append(
      f"{r['batch']:>5} {r['variant']:<26} {r['ms_per_sample']:>10.2f} "
      f"{r['ms_per_token']:>9.3f} "
      f"{r['speedup_vs_hf_greedy']:>12.2f} {exit_layer:>5} {agreement:>18}"
    )
  return "\n".join(lines)


def _floor(model, probe: dict, static: dict, new_tokens: int) -> dict:
  """Batch-1 static decoding against the weight-streaming floor: the bytes a token reads
  (`static_bytes_per_token`) at this machine's measured memory bandwidth."""
  one = {"input_ids": probe["input_ids"], "attention_mask": np.ones_like(probe["input_ids"])}
  encoder_ms = 1000 * median_seconds(make_encode(model), one, repeats=_REPEATS.value)
  bandwidth = memory_bandwidth()
  nbytes = static_bytes_per_token(model, _MODEL.shape.source_length, new_tokens)
  decoder_ms = (static["ms_per_sample"] - encoder_ms) / new_tokens
  floor_ms = 1000 * nbytes / bandwidth
  return {
    "bytes_per_token": nbytes,
    "memory_bandwidth_gb_s": bandwidth / 1e9,
    "floor_ms_per_token": floor_ms,
    "encoder_ms": encoder_ms,
    "static_decoder_ms_per_token": decoder_ms,
    "static_over_floor": decoder_ms / floor_ms,
    "goal_over_floor": 1.1,
  }


def _print_summary(rows: list[dict], summary: dict, smallest: int) -> None:
  print(table(rows))
  print(
    f"\nOur static greedy vs HF eager greedy at batch {smallest}: "
    f"{summary['speedup_vs_hf_greedy']:.2f}x"
  )
  if "floor_ms_per_token" in summary:
    print(
      f"Weight-streaming floor: {summary['bytes_per_token'] / 1e6:.1f} MB per token at "
      f"{summary['memory_bandwidth_gb_s']:.1f} GB/s = {summary['floor_ms_per_token']:.3f} ms/token; "
      f"our static decoder {summary['static_decoder_ms_per_token']:.3f} ms/token = "
      f"{summary['static_over_floor']:.2f}x the floor (goal <= 1.1x)"
    )


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO.
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  shape, new_tokens = _MODEL.shape, _NEW_TOKENS.value
  layers = shape.layers
  torch_device = _TORCH_DEVICE.value or ("cuda" if torch.cuda.is_available() else "cpu")
  with tempfile.TemporaryDirectory() as tmp:
    hf_model = build_hf_model(
      os.path.join(tmp, "hf"),
      layers,
      shape.d_model,
      shape.heads,
      shape.d_ff,
      shape.vocab,
      max(shape.source_length, new_tokens + 1),
    )
    hf_to_orbax(os.path.join(tmp, "hf"), os.path.join(tmp, "orbax"))
    model = checkpoint.load_model(os.path.join(tmp, "orbax"))
  hf_model = hf_model.to(torch_device)
  probe_ids = np.random.default_rng(0).integers(3, shape.vocab, (1, shape.source_length))
  probe = {"input_ids": probe_ids.astype(np.int32)}
  oracle = make_generate(model, DecodeConfig(exit_mode="oracle", max_new_tokens=new_tokens))
  threshold = threshold_for_depth(oracle, probe, layers / 2)
  rows = []
  for batch in (int(b) for b in _BATCHES.value):
    rows += bench_batch(
      hf_model, model, batch, threshold, _BEAMS.value, _REPEATS.value, new_tokens, torch_device
    )
  smallest = min(r["batch"] for r in rows)
  static = next(r for r in rows if r["batch"] == smallest and r["variant"] == "ours static")
  summary = {
    "variant": f"ours static, batch {smallest}",
    "speedup_vs_hf_greedy": static["speedup_vs_hf_greedy"],
  }
  if smallest == 1:
    summary.update(_floor(model, probe, static, new_tokens))
  _print_summary(rows, summary, smallest)
  write_result(
    _OUTPUT.value,
    {
      "model": json.loads(model.config.to_json()),
      "max_new_tokens": new_tokens,
      "source_length": shape.source_length,
      "repeats": _REPEATS.value,
      "threshold": threshold,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "torch_device": torch_device,
      "rows": rows,
      "summary": summary,
    },
  )


if __name__ == "__main__":
  cli.run(main)
