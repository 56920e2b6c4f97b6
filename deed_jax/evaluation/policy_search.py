"""Calibrating DEED's whole exit policy: which confidence, from which decoder layer tokens may exit, and
at which threshold (`ExitPolicy`), with the Learn-then-Test guarantee of `calibration`.

With one confidence and one first exit layer the candidates are thresholds, and their order is known
beforehand (the higher, the later tokens exit): they are tested highest first on the whole calibration
split. Across first exit layers and confidences no order is known beforehand (a shallow exit can be
confidently wrong at any threshold; a deep one costs more at every threshold), so it comes from data
the test never sees: the calibration split is cut by document / image (seeded, `grouping`); on
`ORDERING_SHARE` of it every policy is decoded at batch 1 and timed (its cost: the median decoder time
per sample, the latency users see), and the share of answers it changes against static decoding is
its risk there (finer than its loss: only a changed answer can lose); `calibration.fixed_sequence`
orders them costliest first, leaving out the costlier-and-riskier and all but `FALLBACKS` of the
costlier policies that changed nothing; the rest of the split tests them in that order,
and the cheapest certified policy (by the measured cost) is chosen. The guarantee then holds over the
rest's groups exactly as for thresholds, since the order depends only on the other part.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from deed_jax.data import grouping
from deed_jax.evaluation import calibration
from deed_jax.evaluation.splits import (
  Split,
  check_per_example_metric,
  loss_words,
  progress_bar,
  run_quality,
  split_quality,
)
from deed_jax.evaluation.sweep import Setting, decode_settings

ORDERING_SHARE = 0.2  # of the calibration split's examples (whole groups) that order the policies
ORDERING_SEED = 1  # of that cut (the builders cut calibration from validation with seed 0)
FALLBACKS = 3  # policies that changed no answer of the ordering part, tested before the cheapest


@dataclasses.dataclass(frozen=True)
class ExitPolicy:
  """DEED exits at the first layer from `min_exit_layer` on whose `confidence` reaches `threshold`."""

  confidence: str
  min_exit_layer: int
  threshold: float

  def setting(self, backfill_chunk: int) -> Setting:
    return Setting(
      "deed",
      threshold=self.threshold,
      min_exit_layer=self.min_exit_layer,
      backfill_chunk=backfill_chunk,
      confidence=self.confidence,
    )

  def __str__(self) -> str:
    return f"{self.confidence} >= {self.threshold:g} from layer {self.min_exit_layer}"


def policy_grid(
  confidences: Sequence[str], min_exit_layers: Sequence[int], thresholds: Sequence[float]
) -> list[ExitPolicy]:
  return [
    ExitPolicy(c, m, float(t)) for c in confidences for m in min_exit_layers for t in thresholds
  ]


class _DecodedOnDemand(collections.abc.Mapping):
  """{policy: per-example quality [n]}, each policy decoded the first time it is read. Calibration
  reads policies in its sequence and stops at the first it cannot certify, so the policies after it
  (and their decoding time) are never spent."""

  def __init__(self, decode: Callable[[ExitPolicy], np.ndarray], policies: Sequence[ExitPolicy]):
    self._decode, self._policies, self._scores = decode, list(policies), {}

  def __getitem__(self, policy: ExitPolicy) -> np.ndarray:
    if policy not in self._scores:
      self._scores[policy] = self._decode(policy)
    return self._scores[policy]

  def __iter__(self):
    return iter(self._policies)

  def __len__(self) -> int:
    return len(self._policies)


@dataclasses.dataclass(frozen=True)
class PolicyCalibration:
  """The test's outcome (on the testing part), and what ordered it: per policy measured on the
  ordering part (policy, decoder_ms_per_sample at batch 1, risk, mean_exit_layer, in_sequence);
  empty when the policies were thresholds of one family, tested in their own order."""

  outcome: calibration.Calibration
  sequence: tuple[ExitPolicy, ...]
  ordering: tuple[dict, ...] = ()
  ordering_examples: int = 0
  ordering_groups: int = 0

  @property
  def family(self) -> ExitPolicy:
    """The chosen policy, or (failing all) the safest tested: whose confidence and first exit the
    report's threshold sweep uses."""
    return self.outcome.chosen or self.sequence[0]


def measure_policies(
  model,
  split: Split,
  policies: Sequence[ExitPolicy],
  backfill_chunk: int,
  progress: bool,
) -> list[dict]:
  """Every policy (and static) decoded at batch 1 on `split`, timed, taking turns on each example.
  -> per policy: policy, decoder_ms_per_sample (median), risk (mean group loss against static, in
  [0, 1]), changed (mean over groups of the share of answers whose tokens differ from static's: a
  finer signal than the loss, which only changed answers can have), mean_exit_layer."""
  settings = [Setting("static")] + [p.setting(backfill_chunk) for p in policies]
  with progress_bar(
    len(split.examples) * len(settings), f"order policies ({split.name})", progress
  ) as bar:
    static, *runs = decode_settings(
      model,
      split.batches(1),
      settings,
      split.max_new_tokens,
      progress=bar.update,
      prompt_width=split.prompt_width,
      constraints=split.constraints,
    )
  full = run_quality(static, split)
  rows = []
  for policy, run in zip(policies, runs):
    losses = np.clip(full - run_quality(run, split), 0.0, 1.0)
    changed = [not np.array_equal(a, b) for a, b in zip(run.tokens, static.tokens)]
    exits = np.concatenate([e[e > 0] for e in run.exit_layers])
    rows.append(
      {
        "policy": policy,
        "decoder_ms_per_sample": 1000 * float(np.median(run.decoder_seconds)),
        "risk": float(calibration.group_means(losses, split.groups).mean()),
        "changed": float(calibration.group_means(np.asarray(changed, float), split.groups).mean()),
        "mean_exit_layer": float(exits.mean()) if exits.size else 0.0,
      }
    )
  return rows


def calibrate_policy(
  model,
  split: Split,
  policies: Sequence[ExitPolicy],
  backfill_chunk: int,
  batch_size: int,
  max_drop: float,
  delta: float,
  progress: bool,
) -> PolicyCalibration:
  """The cheapest policy of the grid certified on `split` (see the module docstring). The testing
  part is decoded at `batch_size` (untimed): static, then the policies in sequence as the test reads
  them."""
  check_per_example_metric(split.metric)
  ordering, rows, cost = None, [], None
  if len({(p.confidence, p.min_exit_layer) for p in policies}) == 1:
    testing, sequence = split, sorted(policies, key=lambda p: -p.threshold)
  else:
    taken, rest = grouping.cut_by_group(
      split.groups, ORDERING_SHARE, f"the {split.name} split", ORDERING_SEED
    )
    ordering, testing = (
      split.subset(taken, f"{split.name}, ordering"),
      split.subset(rest, split.name),
    )
    rows = measure_policies(model, ordering, policies, backfill_chunk, progress)
    costs = {r["policy"]: r["decoder_ms_per_sample"] for r in rows}
    changed = {r["policy"]: r["changed"] for r in rows}
    sequence = calibration.fixed_sequence(costs, changed, FALLBACKS)
    for row in rows:
      row["in_sequence"] = row["policy"] in sequence
    cost = costs.get
  with progress_bar(
    len(testing.examples) * (1 + len(sequence)), f"calibrate ({split.name})", progress
  ) as bar:
    decode = lambda setting: split_quality(
      model, testing, setting, "max_prob", batch_size, bar.update
    )
    outcome = calibration.calibrate(
      decode(Setting("static")),
      _DecodedOnDemand(lambda policy: decode(policy.setting(backfill_chunk)), sequence),
      max_drop,
      delta,
      groups=testing.groups,
      loss=loss_words(split.metric),
      sequence=sequence,
      cost=cost,
      words=str,
    )
    bar.total = bar.n  # the policies left untested were never decoded
  return PolicyCalibration(
    outcome,
    tuple(sequence),
    tuple(rows),
    0 if ordering is None else len(ordering.examples),
    0 if ordering is None else len(set(ordering.groups)),
  )
