"""Plain-text tables of evaluation results."""

from __future__ import annotations


def exit_table(results: dict) -> str:
  """Per-exit exact match, token accuracy and loss (and the exit classifier's accuracy, when the
  model has one), one row per decoder exit."""
  probe = results.get("exit_classifier_accuracy")
  rows = [
    f"{'exit':>5} {'exact match':>12} {'token acc':>10} {'loss':>8}"
    + (f" {'classifier acc':>15}" if probe else "")
  ]
  for index, (em, acc, loss) in enumerate(
    zip(results["exit_exact_match"], results["exit_token_accuracy"], results["exit_loss"]), start=1
  ):
    rows.append(
      f"{index:>5} {100 * em:>11.1f}% {100 * acc:>9.1f}% {loss:>8.3f}"
      + (f" {100 * probe[index - 1]:>14.1f}%" if probe else "")
    )
  return "\n".join(rows)


def settings_table(rows: list[dict]) -> str:
  """Decoding settings side by side (rows of `deed_jax.evaluation.sweep.summarise`): the task metric,
  token exact match when the metric is another, mean exit layer, latency and speedup over static;
  speculative rows add their acceptance."""
  name = rows[0]["metric_name"] if rows else "exact_match"
  other = name != "exact_match"  # exact match is then a column of its own
  timed = bool(rows) and "decoder_ms_per_sample" in rows[0]
  out = [
    f"{'setting':<20} {name:>12}"
    + (f" {'exact match':>12}" if other else "")
    + f" {'mean exit':>10}"
    + (f" {'decoder ms/sample':>18} {'total ms/sample':>16} {'speedup':>8}" if timed else "")
  ]
  for row in rows:
    line = (
      f"{row['setting']:<20} {row['metric']:>12.1f}"
      + (f" {100 * row['exact_match']:>11.1f}%" if other else "")
      + f" {row['mean_exit_layer']:>10.2f}"
    )
    if timed:
      speedup = row.get("decoder_speedup")
      line += f" {row['decoder_ms_per_sample']:>18.3f} {row['total_ms_per_sample']:>16.3f} " + (
        f"{speedup:>7.2f}x" if speedup is not None else f"{'':>8}"
      )
    if "draft_acceptance" in row:  # speculative
      line += (
        f"  drafts accepted {100 * row['draft_acceptance']:.1f}%, "
        f"{row['tokens_per_round']:.2f} tokens/round"
      )
    out.append(line)
  return "\n".join(out)
