"""Plain-text tables of evaluation results."""

from __future__ import annotations


def exit_table(results: dict) -> str:
  """Per-exit exact match, token accuracy and loss (and the exit classifier's accuracy, when the
  model has one), one row per decoder exit."""
  probe = results.get("exit_classifier_accuracy")
  rows = [f"{'exit':>5} {'exact match':>12} {'token acc':>10} {'loss':>8}"
          + (f" {'classifier acc':>15}" if probe else "")]
  for index, (em, acc, loss) in enumerate(zip(results["exit_exact_match"],
                                              results["exit_token_accuracy"],
                                              results["exit_loss"]), start=1):
    rows.append(f"{index:>5} {100 * em:>11.1f}% {100 * acc:>9.1f}% {loss:>8.3f}"
                + (f" {100 * probe[index - 1]:>14.1f}%" if probe else ""))
  return "\n".join(rows)


def decoding_table(rows: list[dict]) -> str:
  """Full-depth vs DEED side by side (rows of `compare_decoding`)."""
  name = rows[0].get("metric_name") if rows else None
  task = name is not None and name != "exact_match"  # exact match on strings: the column already there
  out = [f"{'decoding':<16} {'exact match':>12}" + (f" {name:>12}" if task else "")
         + f" {'mean exit':>10} {'decoder ms/sample':>18} {'speedup':>8}"]
  for row in rows:
    out.append(f"{row['decoding']:<16} {100 * row['exact_match']:>11.1f}%"
               + (f" {row['metric']:>12.1f}" if task else "")
               + f" {row['mean_exit_layer']:>10.2f} {row['decoder_ms_per_sample']:>18.2f} "
               f"{row['decoder_speedup']:>7.2f}x")
  return "\n".join(out)
