"""Choosing an exit threshold with a guarantee: Learn-then-Test over a threshold grid.

Goal: the fastest (lowest) threshold tau whose drop in the task metric against full depth is at most
`max_drop` points, with probability at least 1 - `delta` over the draw of the calibration split.

The loss of example i at tau is l_i(tau) = max(0, m_i(full) - m_i(tau)) for per-example metric values
m in [0, 1]: the points it loses by exiting early (gains are not credited, so the bound is
conservative). Its risk R(tau) = E[l(tau)] bounds the expected drop in the metric. For each tau the null
hypothesis "R(tau) > eps" (eps = max_drop / 100) gets a p-value from the empirical risk R_hat of n
calibration examples: an upper bound on P(R_hat <= observed) under the null. Two such bounds hold for
independent losses in [0, 1], Hoeffding's, exp(-n KL(R_hat || eps)) for R_hat < eps (KL between
Bernoulli means), and Bentkus', e * P(Binomial(n, eps) <= ceil(n R_hat)); both bound the same
probability, so their minimum does too (Learn-then-Test's Hoeffding-Bentkus p-value).

Thresholds are tested in a fixed sequence, from the safest (highest) to the fastest, each at level
delta, stopping at the first that cannot be rejected; every rejected threshold then has R <= eps
simultaneously with probability >= 1 - delta (fixed-sequence testing needs no multiplicity
correction), and the lowest of them is chosen. A higher threshold exits later, so the sequence
follows the order in which risk grows. Thresholds below the first that is not rejected are never
looked at, so a caller that decodes a threshold's examples only when `calibrate` reads them (a lazy
mapping) decodes no more than the test needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

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


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The outcome: `threshold` is the chosen one (None when even the safest failed); `tested` holds a
  row per threshold tested (threshold, risk: the empirical mean drop in [0, 1], p_value, rejected)."""

  threshold: float | None
  max_drop: float  # points, 0..100
  delta: float
  num_examples: int
  tested: tuple[dict, ...]

  def guarantee(self) -> str:
    if self.threshold is None:
      return (
        f"No threshold in the grid keeps the drop within {self.max_drop:g} points at confidence "
        f"{1 - self.delta:.3g} on {self.num_examples} calibration examples; decode at full depth."
      )
    return (
      f"With probability >= {1 - self.delta:.3g} over the calibration split ({self.num_examples} "
      f"examples), threshold {self.threshold:g} loses at most {self.max_drop:g} points of the metric "
      f"against full depth in expectation (Learn-then-Test, Hoeffding-Bentkus p-values, "
      f"fixed-sequence testing over {len(self.tested)} thresholds tested)."
    )


def check_settings(max_drop: float, delta: float) -> None:
  """Refuse impossible settings before anything is decoded."""
  if not 0.0 <= max_drop <= 100.0:
    raise UserError(f"max_drop must be in [0, 100] metric points; got {max_drop}.")
  if not 0.0 < delta < 1.0:
    raise UserError(f"delta must be in (0, 1); got {delta}.")


def calibrate(
  full: Sequence[float],
  by_threshold: Mapping[float, Sequence[float]],
  max_drop: float,
  delta: float,
) -> Calibration:
  """full: per-example metric values in [0, 1] at full depth [n]; by_threshold: the same examples
  decoded at each threshold {tau: [n]}, read safest first and only as far as the test goes.
  -> the fastest threshold with the guarantee."""
  check_settings(max_drop, delta)
  full = np.asarray(full, np.float64)
  n = full.shape[0]
  if n == 0:
    raise UserError("Calibration needs at least one example.")
  for tau in by_threshold:
    if not 0.0 <= tau <= 1.0:
      raise UserError(f"Thresholds must be in [0, 1]; got {tau}.")
  eps = max_drop / 100.0
  chosen, tested = None, []
  for tau in sorted(by_threshold, reverse=True):  # safest first
    values = np.asarray(by_threshold[tau], np.float64)
    if values.shape != (n,):
      raise UserError(f"Threshold {tau} has {values.shape} scores; full depth has ({n},).")
    losses = np.clip(full - values, 0.0, 1.0)
    risk = float(losses.mean())
    p = p_value(risk, n, eps)
    rejected = p <= delta
    tested.append({"threshold": tau, "risk": risk, "p_value": p, "rejected": rejected})
    if not rejected:
      break
    chosen = tau
  return Calibration(chosen, max_drop, delta, n, tuple(tested))


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
    tau = calibrate(full[cal], {t: s[cal] for t, s in scores.items()}, max_drop, delta).threshold
    drop = 0.0 if tau is None else 100.0 * float(full[test].mean() - scores[tau][test].mean())
    out.append((tau, drop))
  return out
