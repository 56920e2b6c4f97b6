"""Choosing an exit threshold, or a whole exit policy, with a guarantee: Learn-then-Test over a grid.

Goal: the fastest candidate (a threshold tau, or a policy: confidence, first exit layer, threshold)
whose drop in the task metric against full depth is at most
`max_drop` points, with probability at least 1 - `delta` over the draw of the calibration split.

The loss of example i at tau is l_i(tau) = max(0, m_i(full) - m_i(tau)) for per-example metric values
m in [0, 1]: the points it loses by exiting early (gains are not credited, so the bound is
conservative). An error rate such as CER is unbounded per example; it enters as m = 1 - min(CER, 1),
so its guarantee bounds the drop in CER clipped at 1 per example, and says so.

Questions about one document or image are not independent draws, so the unit of the test is the
group: a group's loss is the mean of its questions' losses, and the assumption is that the groups of
the calibration split and those decoded later are exchangeable (the VQA builders cut calibration and
test by group; examples without a group are their own). The risk R(tau) = E[group loss] is the
expected drop over a group's questions. For each tau the null hypothesis "R(tau) > eps" (eps =
max_drop / 100) gets a p-value from the empirical risk R_hat of n calibration groups: an upper bound on
P(R_hat <= observed) under the null. Two such bounds hold for independent losses in [0, 1],
Hoeffding's, exp(-n KL(R_hat || eps)) for R_hat < eps (KL between Bernoulli means), and Bentkus',
e * P(Binomial(n, eps) <= ceil(n R_hat)); both bound the same probability, so their minimum does too
(Learn-then-Test's Hoeffding-Bentkus p-value).

Candidates (thresholds, or whole exit policies) are tested in a fixed sequence, safest first, each at
level delta, stopping at the first that cannot be rejected; every rejected candidate then has R <= eps
simultaneously with probability >= 1 - delta (fixed-sequence testing needs no multiplicity
correction), and the cheapest of them is chosen. The sequence must not depend on the examples tested:
for thresholds it is their order (a higher threshold exits later, so risk grows along it); for
policies `fixed_sequence` orders them from measurements on a disjoint part of the calibration split.
Candidates after the first that is not rejected are never looked at, so a caller that decodes a
candidate's examples only when `calibrate` reads them (a lazy mapping) decodes no more than the test
needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

from deed_jax.errors import UserError


def bernoulli_kl(a: float, b: float) -> float:
  """KL(Bernoulli(a) || Bernoulli(b)), 0 < b < 1."""
  term = lambda x, y: 0.0 if x == 0.0 else x * math.log(x / y)
  return term(a, b) + term(1.0 - a, 1.0 - b)


def hoeffding_p_value(risk: float, n: int, eps: float) -> float:
  if risk >= eps or eps >= 1.0:  # risk >= 0, so below this 0 <= risk < eps < 1
    return 1.0
  return math.exp(-n * bernoulli_kl(risk, eps))


def bentkus_p_value(risk: float, n: int, eps: float) -> float:
  return min(math.e * float(stats.binom.cdf(math.ceil(n * risk - 1e-9), n, eps)), 1.0)


def p_value(risk: float, n: int, eps: float) -> float:
  """A valid p-value for H0: the true risk exceeds eps, given the empirical risk of n losses in
  [0, 1]."""
  return min(hoeffding_p_value(risk, n, eps), bentkus_p_value(risk, n, eps))


def group_means(losses: np.ndarray, groups: Sequence[str] | None) -> np.ndarray:
  """[groups] the mean loss of each group's examples (None: every example its own group)."""
  if groups is None:
    return losses
  _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
  return np.bincount(index, weights=losses) / np.bincount(index)


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The outcome: `chosen` is the chosen candidate (None when even the safest failed); `tested` holds
  a row per candidate tested (candidate, risk: the empirical mean drop in [0, 1], p_value, rejected);
  `chosen_words` names the choice in the guarantee."""

  chosen: Hashable | None
  max_drop: float  # points, 0..100
  delta: float
  num_examples: int
  tested: tuple[dict, ...]
  num_groups: int = 0  # the documents / images the examples are about (0: one per example)
  loss: str = "the drop in the metric"  # what the guarantee bounds, in words
  chosen_words: str = ""

  def guarantee(self) -> str:
    grouped = self.num_groups and self.num_groups != self.num_examples
    sample = f"{self.num_examples} calibration examples"
    unit, draws = "an example", "examples"
    if grouped:
      sample = f"{self.num_examples} calibration questions about {self.num_groups} documents/images"
      unit, draws = "a document's questions", "documents"
    if self.chosen is None:
      return (
        f"No candidate in the grid keeps {self.loss} within {self.max_drop:g} points at "
        f"confidence {1 - self.delta:.3g} on {sample}; decode at full depth."
      )
    return (
      f"With probability >= {1 - self.delta:.3g} over the calibration split ({sample}), "
      f"{self.chosen_words} keeps {self.loss} against full depth within "
      f"{self.max_drop:g} points in expectation over {unit}, assuming the {draws} calibrated on "
      f"and those decoded later are exchangeable (Learn-then-Test, Hoeffding-Bentkus p-values, "
      f"fixed-sequence testing, {len(self.tested)} candidates tested)."
    )


def check_settings(max_drop: float, delta: float) -> None:
  """Refuse impossible settings before anything is decoded."""
  if not 0.0 <= max_drop <= 100.0:
    raise UserError(f"max_drop must be in [0, 100] metric points; got {max_drop}.")
  if not 0.0 < delta < 1.0:
    raise UserError(f"delta must be in (0, 1); got {delta}.")


def threshold_words(threshold: float) -> str:
  return f"threshold {threshold:g}"


def calibrate(
  full: Sequence[float],
  candidates: Mapping[Hashable, Sequence[float]],
  max_drop: float,
  delta: float,
  groups: Sequence[str] | None = None,
  loss: str = "the drop in the metric",
  sequence: Sequence[Hashable] | None = None,
  cost: Callable[[Hashable], float] | None = None,
  words: Callable[[Hashable], str] = threshold_words,
) -> Calibration:
  """full: per-example metric values in [0, 1] at full depth [n]; candidates: the same examples
  decoded under each candidate {key: [n]}, read in `sequence` (default: the keys, thresholds, highest
  first) and only as far as the test goes; groups: each example's document / image [n] (None:
  independent examples); loss: what the values' drop means, and `words(key)` the candidate, for the
  guarantee's words; cost(key): what is cheapest among the certified (default: the last certified).
  -> the cheapest certified candidate, with the guarantee."""
  check_settings(max_drop, delta)
  full = np.asarray(full, np.float64)
  n = full.shape[0]
  if n == 0:
    raise UserError("Calibration needs at least one example.")
  if groups is not None and len(groups) != n:
    raise UserError(f"Calibration got {len(groups)} groups for {n} examples.")
  if sequence is None:
    for tau in candidates:
      if not 0.0 <= tau <= 1.0:
        raise UserError(f"Thresholds must be in [0, 1]; got {tau}.")
    sequence = sorted(candidates, reverse=True)  # safest first
  eps = max_drop / 100.0
  certified, tested = [], []
  for key in sequence:
    values = np.asarray(candidates[key], np.float64)
    if values.shape != (n,):
      raise UserError(f"{words(key)} has {values.shape} scores; full depth has ({n},).")
    losses = group_means(np.clip(full - values, 0.0, 1.0), groups)
    risk = float(losses.mean())
    p = p_value(risk, losses.shape[0], eps)
    rejected = p <= delta
    tested.append({"candidate": key, "risk": risk, "p_value": p, "rejected": rejected})
    if not rejected:
      break
    certified.append(key)
  chosen = None
  if certified:
    chosen = certified[-1] if cost is None else min(certified, key=cost)
  num_groups = n if groups is None else len(set(groups))
  return Calibration(
    chosen,
    max_drop,
    delta,
    n,
    tuple(tested),
    num_groups,
    loss,
    "" if chosen is None else words(chosen),
  )


def fixed_sequence(
  costs: Mapping[Hashable, float], risks: Mapping[Hashable, float], fallbacks: int | None = None
) -> list:
  """The order in which to test candidates, from their cost and a measure of risk taken on examples
  the test will not see: costliest first, leaving out every candidate that another, no costlier,
  has strictly lower risk than (it is costlier and riskier). What is left opens with the candidates
  of zero risk, costliest first (fallbacks for the cheapest of them; `fallbacks`: keep only that many
  besides the cheapest), and goes on with risk never falling."""
  keys = sorted(costs, key=lambda k: -costs[k])
  kept = [
    k for k in keys if not any(costs[o] <= costs[k] and risks[o] < risks[k] for o in keys if o != k)
  ]
  riskless = [k for k in kept if risks[k] <= 0.0]
  if fallbacks is not None and len(riskless) > fallbacks + 1:
    kept = [k for k in kept if k not in riskless[: len(riskless) - fallbacks - 1]]
  return kept


def check_sizes(calibration_size: int, test_size: int, num_examples: int) -> None:
  """Disjoint calibration and test sets of these sizes must fit in `num_examples`."""
  if calibration_size < 1 or test_size < 1 or calibration_size + test_size > num_examples:
    raise UserError(
      f"Calibration ({calibration_size}) and test ({test_size}) sets of at least one "
      f"example each must fit, disjoint, in the {num_examples} examples."
    )


def resampled_drops(
  full: Sequence[float],
  by_threshold: Mapping[float, Sequence[float]],
  calibration_size: int,
  test_size: int,
  max_drop: float,
  delta: float,
  trials: int,
  seed: int = 0,
) -> list[tuple[float | None, float]]:
  """How a calibration setup fares on data like `full` / `by_threshold` (per-example metric values in
  [0, 1] of n examples, at full depth and at each threshold): `trials` times, draw disjoint random
  calibration and test sets of the given sizes, calibrate on the first and measure the chosen
  threshold's drop on the second. -> [(threshold or None, test drop in points)] per trial. The
  guarantee bounds the expected drop; this shows how far a test set of `test_size` strays from it."""
  full = np.asarray(full, np.float64)
  scores = {tau: np.asarray(values, np.float64) for tau, values in by_threshold.items()}
  check_sizes(calibration_size, test_size, full.shape[0])
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(trials):
    order = rng.permutation(full.shape[0])
    cal, test = order[:calibration_size], order[calibration_size : calibration_size + test_size]
    tau = calibrate(full[cal], {t: s[cal] for t, s in scores.items()}, max_drop, delta).chosen
    drop = 0.0 if tau is None else 100.0 * float(full[test].mean() - scores[tau][test].mean())
    out.append((tau, drop))
  return out
