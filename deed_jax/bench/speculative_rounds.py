"""Speculative decoding's rounds against what its pieces cost: the figures `bench.speculative` prints
per speculative setting. (No flags here: tests import it.)

Per setting: `identical` (the share of examples whose tokens equal static decoding's:
1.0, or the implementation is wrong), draft acceptance, drafts and tokens per round, and the speed-up
bound at the costs decoding pays (`costs.step_costs`, timed inside decoding programs at the same
batch): static pays S per step, one step per token of the batch's longest row; a round that drafts m
tokens pays m D_d + V_dk (D_d a draft step, V_dk a verification of k + 1 slots), so bound = (static's
steps) S / (rounds (m D_d + V_dk)), with m the measured drafts per row and round (at batch > 1 rows
that have ended count, which understates m a little). At batch 1 that is t S / (m D_d + V_dk), t the
tokens per round. `bound_full_rounds`: every round drafting k and emitting k + 1 (long outputs,
every draft accepted). `round_ms` is a round's measured decoder time and `round_overhead_ms` what
it costs beyond its parts (not the round's own bookkeeping: docs/benchmarks.md). At batch > 1 rows
share the cache slot and a round emits the batch's fewest accepted (+ 1); `per_row_rounds` (added by
`bench.speculative`) is the rounds per-row slots would need at least (each batch's slowest row,
decoded alone at batch 1).
"""

from __future__ import annotations

import numpy as np

from deed_jax.evaluation.sweep import SettingRun, acceptance


def speculative_row(run: SettingRun, static: SettingRun, costs: dict[str, float]) -> dict:
  """The speculative figures of one run (see the module docstring); `costs` from
  `costs.step_costs` at the run's batch size."""
  d, k = run.setting.draft_exit_layer, run.setting.max_draft
  summary = acceptance(run)
  draft, verify, static_step = costs[f"draft {d}"], costs[f"verify {d}:{k}"], costs["static"]
  parts = summary["drafts_per_round"] * draft + verify
  rounds = max(summary["rounds"], 1)
  round_ms = 1000 * sum(np.asarray(run.decoder_seconds) * run.batch_size) / rounds
  same = [np.array_equal(a, b) for a, b in zip(run.tokens, static.tokens)]
  kept = ("rounds", "draft_acceptance", "tokens_per_round", "drafts_per_round")
  return {
    "identical": float(np.mean(same)),
    **{key: summary[key] for key in kept},
    "round_ms": float(round_ms),
    "round_parts_ms": float(parts),
    "round_overhead_ms": float(round_ms - parts),
    "bound": float(static_steps(static) * static_step / (rounds * parts)),
    "bound_full_rounds": float((k + 1) * static_step / (k * draft + verify)),
  }


def static_steps(static: SettingRun) -> int:
  """The steps static decoding took over all batches: each batch runs until its longest row ends."""
  lengths = [int((e > 0).sum()) for e in static.exit_layers]
  size = static.batch_size
  return sum(max(lengths[i : i + size]) for i in range(0, len(lengths), size))
