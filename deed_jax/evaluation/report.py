"""Plain-text tables of evaluation results."""

from __future__ import annotations


def exit_table(results: dict) -> str:
  """Per-exit exact match, token accuracy and loss, one row per decoder exit."""
  rows = [f"{'exit':>5} {'exact match':>12} {'token acc':>10} {'loss':>8}"]
  for index, (em, acc, loss) in enumerate(zip(results["exit_exact_match"],
                                              results["exit_token_accuracy"],
                                              results["exit_loss"]), start=1):
    rows.append(f"{index:>5} {100 * em:>11.1f}% {100 * acc:>9.1f}% {loss:>8.3f}")
  return "\n".join(rows)
