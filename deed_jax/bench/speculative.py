r"""Lossless speculative decoding against static, fixed-exit and DEED decoding on a trained workdir.

  python -m deed_jax.bench.speculative --workdir workdirs/forms_vqa_normalised_local \
      [--speculative 3:4,4:4 --batch_sizes 1,8 --num_examples 200 --output DIR/speculative.json]

A trained model is needed (a random one's draft exit agrees with nothing): the workdir's task and its
`--split` examples, as `python -m deed_jax.evaluate` reads them. Every setting decodes the same
batches in turn (`evaluation.sweep.decode_settings`), so a slow spell of the machine hits them alike;
latency is the median per-sample decoder time over batches, speedup the median per-batch ratio to
static. DEED runs at the workdir's calibrated threshold and min_exit_layer (decode_config.json;
`--threshold` otherwise).

Per speculative setting, the figures of `speculative_rounds.speculative_row`: whether its tokens
equal static decoding's, acceptance, tokens per round, the speed-up bound at step costs timed inside
decoding programs (`costs.step_costs`), and a round's measured time and overhead.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from deed_jax import checkpoint, cli
from deed_jax.bench.costs import step_costs
from deed_jax.bench.report import write_result
from deed_jax.bench.speculative_rounds import speculative_row
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
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timings of each step cost.")
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
  rows, solo_rounds = [], {}
  costs = {}
  for size in (int(b) for b in _BATCHES.value):
    batch = encoder_inputs(split.batches(size)[0])
    costs[size] = step_costs(model, batch, pairs, split.max_new_tokens, _REPEATS.value)
    print(
      f"batch {size}, ms per call: " + ", ".join(f"{k} {v:.3f}" for k, v in costs[size].items())
    )
    runs = decode_settings(
      model,
      split.batches(size),
      settings(pairs, layers, deed),
      split.max_new_tokens,
      prompt_width=split.prompt_width,
      constraints=split.constraints,
    )
    rows += [_row(run, runs[0], size, costs[size], solo_rounds) for run in runs]
  print(_table(rows))
  write_result(
    _OUTPUT.value,
    {
      "workdir": workdir,
      "split": _SPLIT.value,
      "num_examples": len(split.examples),
      "decoder_layers": layers,
      "step_costs_ms": {str(size): c for size, c in costs.items()},
      "deed": deed,
      "rows": rows,
    },
  )


def _row(run, static, size, costs, solo_rounds: dict) -> dict:
  """A setting's row; speculative ones add `speculative_row` and, at batch > 1, the rounds per-row
  slots would need at least (from `solo_rounds`, each example's rounds at batch 1, filled here)."""
  row = _timing_row(run, static, size)
  if run.setting.exit_mode != "speculative":
    return row
  row.update(speculative_row(run, static, costs))
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
    f"{'same':>5} {'accept':>7} {'tok/rnd':>8} {'bound':>6} {'full':>6} {'rnd ms':>7} {'over':>6} "
    f"{'rounds':>7} {'per-row':>8}"
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
        f"{r['tokens_per_round']:>8.2f} {r['bound']:>5.2f}x {r['bound_full_rounds']:>5.2f}x "
        f"{r['round_ms']:>7.3f} {r['round_overhead_ms']:>6.3f} {r['rounds']:>7}"
        f" {r.get('per_row_rounds', ''):>8}"
      )
    lines.append(line)
  return "\n".join(lines)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
