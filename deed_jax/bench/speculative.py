r"""Lossless speculative decoding against static, fixed-exit and DEED decoding on a trained workdir.

  python -m deed_jax.bench.speculative --workdir workdirs/forms_vqa_normalised_local \
      [--speculative 3:4,4:4 --batch_sizes 1,8 --num_examples 200 --output DIR/speculative.json]

A trained model is needed (a random one's draft exit agrees with nothing): the workdir's task and its
`--split` examples, as `python -m deed_jax.evaluate` reads them. Every setting decodes the same
batches in turn (`evaluation.sweep.decode_settings`), so a slow spell of the machine hits them alike;
latency is the median per-sample decoder time over batches, speedup the median per-batch ratio to
static. DEED runs at the workdir's calibrated threshold and min_exit_layer (decode_config.json;
`--threshold` otherwise).

Per speculative setting: `identical` (the share of examples whose tokens equal static decoding's:
1.0, or the implementation is wrong), draft acceptance and tokens per round, and the speed-up bound
at the measured costs: static costs L + h per token (h: the head, in one-position layer calls); a
round drafting m tokens costs m (d + h) + d + (L - d) c + h c, with c the measured cost of a block of
k + 1 positions relative to one, and emits t tokens: bound = t (L + h) / that. At batch > 1 rows share
the cache slot and a round emits the batch's fewest accepted (+ 1); `per_row_rounds` is the rounds
per-row slots would need at least (each batch's slowest row, decoded alone at batch 1).
"""

from __future__ import annotations

import numpy as np
from absl import flags

from deed_jax import checkpoint, cli
from deed_jax.bench.costs import block_costs, head_cost
from deed_jax.bench.report import write_result
from deed_jax.evaluation.evaluator import parse_speculative, task_config
from deed_jax.evaluation.splits import Split
from deed_jax.evaluation.sweep import Setting, SettingRun, decode_settings
from deed_jax.models import encoder_inputs
from deed_jax.workdir import workdir_decode_config

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained deed-jax workdir.")
_SPLIT = flags.DEFINE_string("split", "test", "The split decoded.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 200, "Examples of --split.")
_SPECULATIVE = flags.DEFINE_list(
  "speculative", ["3:4", "4:4"], "draft_exit_layer:max_draft settings."
)
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_THRESHOLD = flags.DEFINE_float(
  "threshold", None, "DEED's threshold (default: the workdir's calibrated one)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings of the block and head costs.")
_OUTPUT = flags.DEFINE_string("output", "bench_results/speculative.json", "Where the JSON goes.")


def settings(pairs, layers: int, deed: dict) -> list[Setting]:
  """static, fixed exit at each draft layer, DEED (`deed`: threshold, min_exit_layer,
  backfill_chunk), speculative at each (d, k) with threshold 0 (always k drafts)."""
  drafts = sorted({d for d, _ in pairs})
  return (
    [Setting("static")]
    + [Setting("fixed", fixed_exit_layer=d) for d in drafts if d < layers]
    + [Setting("deed", **deed)]
    + [Setting("speculative", threshold=0.0, draft_exit_layer=d, max_draft=k) for d, k in pairs]
  )


def speculative_row(
  run: SettingRun, static: SettingRun, layers: int, head: float, block: dict[int, float]
) -> dict:
  """The speculative figures of one run (see the module docstring)."""
  rounds, drafted, matched = np.asarray(run.speculation).sum(axis=0)
  d, k = run.setting.draft_exit_layer, run.setting.max_draft
  emitted = sum(int((e > 0).sum()) for e in run.exit_layers)
  rows_rounds = sum(r * run.batch_size for r, _, _ in run.speculation)
  tokens_per_round = emitted / max(rows_rounds, 1)
  drafts_per_round = drafted / max(rows_rounds, 1)
  c = block[k + 1]
  round_cost = drafts_per_round * (d + head) + d + (layers - d) * c + head * c
  same = [np.array_equal(a, b) for a, b in zip(run.tokens, static.tokens)]
  return {
    "identical": float(np.mean(same)),
    "rounds": int(rounds),
    "draft_acceptance": float(matched / max(drafted, 1)),
    "tokens_per_round": float(tokens_per_round),
    "drafts_per_round": float(drafts_per_round),
    "bound": float(tokens_per_round * (layers + head) / round_cost),
  }


def main(argv):
  del argv
  workdir = _WORKDIR.value
  pairs = parse_speculative(_SPECULATIVE.value)
  config = task_config(workdir, None)
  _, model = checkpoint.load_step(workdir)
  layers = model.config.decoder_layers
  split = Split(config, model.config, _SPLIT.value, _NUM_EXAMPLES.value, workdir)
  stored = workdir_decode_config(workdir)
  deed = {
    "threshold": stored.threshold if _THRESHOLD.value is None else _THRESHOLD.value,
    "min_exit_layer": stored.min_exit_layer,
    "backfill_chunk": stored.backfill_chunk,
  }
  widths = sorted({1} | {k + 1 for _, k in pairs})
  one = encoder_inputs(split.batches(1)[0])
  costs = block_costs(model, widths, _REPEATS.value, encoder_inputs=one)
  head = head_cost(model, costs[0]["ms_per_block"] / layers, _REPEATS.value)["in_layers"]
  block = {c["positions"]: c["relative_to_one"] for c in costs}
  print(
    f"L={layers}, head {head:.2f} layers; blocks relative to one position: "
    + ", ".join(f"{w}: {block[w]:.2f}" for w in widths),
    flush=True,
  )
  rows, solo_rounds = [], {}
  for size in (int(b) for b in _BATCHES.value):
    runs = decode_settings(
      model,
      split.batches(size),
      settings(pairs, layers, deed),
      split.max_new_tokens,
      prompt_width=split.prompt_width,
      constraints=split.constraints,
    )
    rows += [_row(run, runs[0], size, layers, head, block, solo_rounds) for run in runs]
  print(_table(rows))
  write_result(
    _OUTPUT.value,
    {
      "workdir": workdir,
      "split": _SPLIT.value,
      "num_examples": len(split.examples),
      "decoder_layers": layers,
      "head_in_layers": head,
      "block_costs": costs,
      "deed": deed,
      "rows": rows,
    },
  )


def _row(run, static, size, layers, head, block, solo_rounds: dict) -> dict:
  """A setting's row; speculative ones add `speculative_row` and, at batch > 1, the rounds per-row
  slots would need at least (from `solo_rounds`, each example's rounds at batch 1, filled here)."""
  row = _timing_row(run, static, size)
  if run.setting.exit_mode != "speculative":
    return row
  row.update(speculative_row(run, static, layers, head, block))
  key = (run.setting.draft_exit_layer, run.setting.max_draft)
  if size == 1:
    solo_rounds[key] = [r for r, _, _ in run.speculation]
  elif key in solo_rounds:
    solo = solo_rounds[key]
    row["per_row_rounds"] = int(sum(max(solo[i : i + size]) for i in range(0, len(solo), size)))
  return row


def _timing_row(run: SettingRun, static: SettingRun, size: int) -> dict:
  layers = np.concatenate([e[e > 0] for e in run.exit_layers])
  return {
    "setting": run.setting.name,
    "batch": size,
    "exact_match": float(np.mean(run.exact)),
    "mean_exit_layer": float(layers.mean()),
    "decoder_ms_per_sample": 1000 * float(np.median(run.decoder_seconds)),
    "speedup": float(np.median(np.asarray(static.decoder_seconds) / run.decoder_seconds)),
  }


def _table(rows: list[dict]) -> str:
  head = (
    f"{'batch':>5} {'setting':<22} {'exact':>6} {'exit':>5} {'ms/sample':>10} {'speedup':>8} "
    f"{'same':>5} {'accept':>7} {'tok/rnd':>8} {'bound':>6} {'rounds':>7} {'per-row':>8}"
  )
  lines = [head]
  for r in rows:
    line = (
      f"{r['batch']:>5} {r['setting']:<22} {100 * r['exact_match']:>5.1f}% "
      f"{r['mean_exit_layer']:>5.2f} {r['decoder_ms_per_sample']:>10.3f} {r['speedup']:>7.2f}x"
    )
    if "identical" in r:
      line += (
        f" {r['identical']:>5.2f} {100 * r['draft_acceptance']:>6.1f}% "
        f"{r['tokens_per_round']:>8.2f} {r['bound']:>5.2f}x {r['rounds']:>7}"
        f" {r.get('per_row_rounds', ''):>8}"
      )
    lines.append(line)
  return "\n".join(lines)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
