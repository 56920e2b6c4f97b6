r"""Decoding after a prompt: time to first token and ms/token after it, static vs DEED, by prompt length.

  python -m deed_jax.bench.prompts [--prompt_lengths 1,16,48 --batch_sizes 1,8 --max_new_tokens 32
                                    --output bench_results/prompts.json]

The model of `bench.decode` (random weights, a linear exit classifier; DEED with the head-free `state`
confidence at the threshold that gives mean exit ~`--target_depth` without a prompt). Every row gets a
random prompt of the given length (the start token, then random ids). Per (P, batch, variant) two
programs are timed round-robin, `--repeats` rounds: `max_new_tokens=1` (the prompt's positions at
every layer, then the first token) and the full decode. Time to first token = the first minus the
encoder's time; ms/token after it = (full - first) / (steps - 1), steps from `layers_run`.

A prompt is computed as one block per layer before the first step. Were it decoded token by token,
each prompt token would cost a static step; `prefill/step` is the measured cost of one prompt position
((TTFT(P) - TTFT(1)) / (P - 1)) over static's ms/token at P = 1: far below 1 when blocks are used.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import flags

from deed_jax import cli
from deed_jax.bench.depth import mean_exit, threshold_for_depth
from deed_jax.bench.model import ModelFlags, inputs_for
from deed_jax.bench.report import write_result
from deed_jax.decoding.config import DecodeConfig
from deed_jax.decoding.generation import make_encode, make_generate
from deed_jax.errors import UserError
from deed_jax.timing import timed

_MODEL = ModelFlags()
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 32, "Tokens decoded after the prompt.")
_PROMPTS = flags.DEFINE_list("prompt_lengths", ["1", "16", "48"], "Prompt lengths P.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_DEPTH = flags.DEFINE_float("target_depth", 3.0, "DEED's mean exit depth without a prompt.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds.")
_OUTPUT = flags.DEFINE_string("output", "bench_results/prompts.json", "Where the JSON goes.")


def _prompts(batch: int, length: int, vocab: int, bos: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
  ids[:, 0] = bos
  return ids


def _time_setting(model, decode, threshold, inputs, prompt, repeats) -> dict:
  """Median seconds of the encoder, the first token and the full decode (round-robin), and the
  full decode's output."""
  encode = make_encode(model)
  first = make_generate(model, dataclasses.replace(decode, max_new_tokens=1))
  full = make_generate(model, decode)
  calls = {
    "encoder": lambda: encode(inputs),
    "first": lambda: first(inputs, threshold, prompt),
    "full": lambda: full(inputs, threshold, prompt),
  }
  for call in calls.values():
    timed(call)  # compile, warm up
  seconds = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      seconds[name].append(timed(call)[1])
  return {name: float(np.median(s)) for name, s in seconds.items()}, full(inputs, threshold, prompt)


def _row(name, length, batch, seconds, out) -> dict:
  steps = int((np.asarray(out.layers_run) > 0).sum())
  ttft = max(seconds["first"] - seconds["encoder"], 0.0)
  return {
    "variant": name,
    "prompt_length": length,
    "batch_size": batch,
    "ttft_ms": 1e3 * ttft,
    "ms_per_token_after": 1e3 * (seconds["full"] - seconds["first"]) / max(steps - 1, 1),
    "steps": steps,
    "mean_exit": mean_exit(out),
    "seconds": seconds,
  }


def main(argv):
  del argv
  lengths = [int(p) for p in _PROMPTS.value]
  batches = [int(b) for b in _BATCHES.value]
  if min(lengths) < 1 or min(batches) < 1:
    raise UserError(f"--prompt_lengths {lengths} and --batch_sizes {batches} must be >= 1.")
  n = _NEW_TOKENS.value
  model = _MODEL.model(max(lengths) + n - 1)
  base = DecodeConfig(max_new_tokens=n, confidence="state")
  variants = {"static": dataclasses.replace(base, exit_mode="static"), "deed": base}
  threshold = threshold_for_depth(
    make_generate(model, base), inputs_for(model.config, 1), _DEPTH.value
  )
  rows = []
  print(f"{'variant':8} {'P':>4} {'B':>3} {'TTFT ms':>9} {'ms/token after':>15} {'mean exit':>9}")
  for batch in batches:
    inputs = inputs_for(model.config, batch)
    for length in lengths:
      prompt = _prompts(batch, length, model.config.vocab_size, model.config.bos_id)
      for name, decode in variants.items():
        seconds, out = _time_setting(model, decode, threshold, inputs, prompt, _REPEATS.value)
        row = _row(name, length, batch, seconds, out)
        rows.append(row)
        print(
          f"{name:8} {length:>4} {batch:>3} {row['ttft_ms']:>9.2f} "
          f"{row['ms_per_token_after']:>15.3f} {row['mean_exit']:>9.2f}"
        )
  _prefill_ratios(rows, lengths, batches)
  write_result(
    _OUTPUT.value,
    {
      "model": dataclasses.asdict(model.config),
      "max_new_tokens": n,
      "deed_threshold": threshold,
      "rows": rows,
    },
  )


def _prefill_ratios(rows: list[dict], lengths: list[int], batches: list[int]) -> None:
  """Per batch and P > 1: one prompt position's cost over a static step (printed; stored per row)."""
  print("\nprefill/step: (TTFT(P) - TTFT(1)) / (P - 1) over static's ms/token at P = 1")
  for batch in batches:
    at = {(r["variant"], r["prompt_length"]): r for r in rows if r["batch_size"] == batch}
    if ("static", 1) not in at:
      continue
    step = at["static", 1]["ms_per_token_after"]
    for (variant, length), row in sorted(at.items()):
      if length > 1 and (variant, 1) in at:
        per_position = (row["ttft_ms"] - at[variant, 1]["ttft_ms"]) / (length - 1)
        row["prefill_per_position_over_step"] = per_position / step
        print(f"  {variant:8} B={batch} P={length}: {per_position / step:.3f}")


if __name__ == "__main__":
  cli.run(main)
